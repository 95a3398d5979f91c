"""The layers of DESIGN.md hold, and `lint-imports` (run by `make lint`) would catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = [
    "The kernel imports no unit",
    "Units never import each other",
    "asyncpg only under remails.db",
    "Benchmarks do not import the tests",
]
# Folder → import name: the units are imported under their installed names (pyproject's
# package-dir), so the copy is laid out by those names for the linter to find it first.
PACKAGES = {
    "remails": "remails",
    "functions": "remails_functions",
    "smtp_edge": "remails_smtp_edge",
    "sender_node": "remails_sender_node",
    "bench": "bench",
    "tests": "tests",
}


def _copy_tree(into: Path) -> None:
    for folder, name in PACKAGES.items():
        shutil.copytree(ROOT / folder, into / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")


def _lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(lint), str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_contracts_hold_on_the_tree() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("sender_node/agent.py", "import remails_smtp_edge.policy", "Units never import each other"),
        ("remails/events.py", "import remails_functions.validate", "The kernel imports no unit"),
        ("functions/route.py", "import asyncpg", "asyncpg only under remails.db"),
        ("bench/relay.py", "import tests.factories", "Benchmarks do not import the tests"),
    ],
)
def test_a_forbidden_import_breaks_the_lint(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    _copy_tree(tmp_path)
    folder, _, rest = module.partition("/")
    target = tmp_path / PACKAGES[folder] / rest
    before = _verdicts(_lint_imports(tmp_path).stdout)
    target.write_text(target.read_text() + f"\n{forbidden}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    after = _verdicts(result.stdout)
    assert before[contract] == "KEPT"
    assert after[contract] == "BROKEN"


def _verdicts(output: str) -> dict[str, str]:
    """Contract name prefix → KEPT or BROKEN, from lint-imports' summary lines."""
    verdicts = {}
    for line in output.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            name, sep, _ = line.partition(f" {verdict}")
            if sep:
                verdicts[name] = verdict
    return {prefix: v for name, v in verdicts.items() for prefix in CONTRACTS if name.startswith(prefix)}
