"""`remails user create` / `reset-password` as the operator runs them, then used to sign in."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from remails.db import Pool, orgs, sessions, users
from tests.support.dnsserver import LocalDns
from tests.test_cli import Cli
from tests.web.conftest import Site, csrf_of


@pytest.fixture
def cli(dsn: str, tmp_path: Path, local_dns: LocalDns) -> Cli:
    return Cli(dsn, tmp_path / "data", local_dns)


async def _sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    form = await client.get("/login")
    return await client.post(
        "/login", data={"email": email, "password": password, "csrf": csrf_of(form.text)}
    )


async def test_user_create_prints_a_password_once_that_signs_in(cli: Cli, pool: Pool, site: Site) -> None:
    org = await orgs.create_organization(pool, "Bakery Ltd")
    made = await cli.json("user", "create", "Dev@Bakery.test", "--org", str(org.id), "--role", "maintainer")
    assert set(made) == {"id", "email", "password"}
    assert made["email"] == "dev@bakery.test" and len(made["password"]) >= 20
    user = await users.get_user_by_email(pool, "dev@bakery.test")
    assert user is not None and str(user.id) == made["id"] and not user.operator
    assert made["password"] not in user.password_hash and user.password_hash.startswith("$argon2id$")
    assert await users.get_membership(pool, user.id, org.id) == "maintainer"

    answer = await _sign_in(site.client, "dev@bakery.test", made["password"])
    assert answer.status_code == 303
    assert "Bakery Ltd" in (await site.client.get("/")).text

    again = await cli.run("user", "create", "dev@bakery.test", "--json")
    assert again.returncode == 1 and "exists" in again.stdout
    operator = await cli.json("user", "create", "op@remails.test", "--operator")
    found = await users.get_user_by_email(pool, operator["email"])
    assert found is not None and found.operator
    half = await cli.run("user", "create", "x@bakery.test", "--org", str(org.id), "--json")
    assert half.returncode == 1 and "--role" in half.stdout


async def test_reset_password_replaces_it_and_ends_sessions(cli: Cli, pool: Pool, site: Site) -> None:
    made = await cli.json("user", "create", "dev@bakery.test")
    assert (await _sign_in(site.client, "dev@bakery.test", made["password"])).status_code == 303
    user = await users.get_user_by_email(pool, "dev@bakery.test")
    assert user is not None
    token = site.client.cookies["remails_session"]
    assert await sessions.get_session(pool, token) is not None

    reset = await cli.json("user", "reset-password", "DEV@bakery.test")
    assert reset["id"] == made["id"] and reset["password"] != made["password"]
    assert await sessions.get_session(pool, token) is None
    assert (await site.client.get("/")).status_code == 303  # signed out
    async with site.fresh() as other:
        assert (await _sign_in(other, "dev@bakery.test", made["password"])).status_code == 401
    async with site.fresh() as other:
        assert (await _sign_in(other, "dev@bakery.test", reset["password"])).status_code == 303
    missing = await cli.run("user", "reset-password", "nobody@bakery.test", "--json")
    assert missing.returncode == 1 and "no user" in missing.stdout
