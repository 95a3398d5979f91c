"""Bad arguments and settings are one line naming the argument, never a driver traceback."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("org", "create", "Acme", "--monthly-quota", "-5"), "argument --monthly-quota: must be from 0 to"),
        (
            ("org", "create", "Acme", "--monthly-quota", "many"),
            "argument --monthly-quota: not a whole number",
        ),
        (("org", "create", ""), "argument name: must not be empty"),
        (("org", "create", "   "), "argument name: must not be empty"),
        (("org", "create", "x" * 101), "argument name: at most 100 characters"),
        (("ip-pool", "create", "", "--ips", "127.0.0.5"), "argument name: must not be empty"),
    ],
)
async def test_org_arguments_refused_in_one_line(cli: Cli, args: tuple[str, ...], names: str) -> None:
    line = await cli.refused(*args)
    assert names in line and "CheckViolation" not in line


async def test_project_arguments_refused_in_one_line(cli: Cli) -> None:
    org = await cli.json("org", "create", "Acme")
    zero = await cli.refused("project", "create", org["id"], "main", "--retention-days", "0")
    assert "argument --retention-days: must be from 1 to 3650, got 0" in zero
    empty = await cli.refused("project", "create", org["id"], "")
    assert "argument name: must not be empty" in empty
    await cli.json("project", "create", org["id"], "main")
    duplicate = await cli.refused("project", "create", org["id"], "main")
    assert duplicate == f"remails: name: organization {org['id']} already has a project named 'main'"


async def test_a_bad_setting_is_one_line_naming_it(cli: Cli) -> None:
    line = await cli.refused("org", "list", env={"REMAILS_HTTP_LISTEN": "nowhere"})
    assert line.startswith("remails: REMAILS_HTTP_LISTEN: ")
