"""The distribution installs the units under names of ours: the wheel has `remails`,
`remails_functions`, `remails_smtp_edge` and `remails_sender_node` at its top level and nothing
called `functions`, `smtp_edge` or `sender_node` that would shadow (or be shadowed by) another
project's package; functions-framework loads `functions/main.py` by path, as the image does,
and that file's imports are served by the installed wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = {"remails", "remails_functions", "remails_smtp_edge", "remails_sender_node"}


def _wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("remails-*.whl")
    return wheel


def test_the_wheel_installs_the_units_under_our_names_and_functions_framework_loads_them(
    tmp_path: Path,
) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == INSTALLED
    assert "remails_functions/web/templates/base.html" in names
    assert "remails/migrations/0001_init.sql" in names
    assert "remails_sender_node/shaping.toml" in names
    # Every package folder of the tree is in the wheel under its installed name.
    for unit, installed in [
        ("functions", "remails_functions"),
        ("smtp_edge", "remails_smtp_edge"),
        ("sender_node", "remails_sender_node"),
    ]:
        for init in (ROOT / unit).rglob("__init__.py"):
            inside = init.relative_to(ROOT / unit).as_posix()
            assert f"{installed}/{inside}" in names, f"{unit}/{inside} is not in the wheel"

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Like the image: the wheel installed, functions/main.py given to functions-framework by path,
    # run from elsewhere than the source tree.
    probe = f"""
import importlib.util, json, sys
from functions_framework import create_app
create_app(target="validate", source={str(ROOT / "functions" / "main.py")!r})
print(json.dumps({{
    "validate": sys.modules["remails_functions.validate"].__file__,
    "functions": importlib.util.find_spec("functions") is not None,
    "smtp_edge": importlib.util.find_spec("smtp_edge") is not None,
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["validate"].startswith(str(site))
    assert found["functions"] is False
    assert found["smtp_edge"] is False
