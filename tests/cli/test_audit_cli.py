"""The operator's changes through the CLI are in the audit log: one entry per change, actor
`operator` (`cli`, no client address), never a secret; `org create` takes the free plan from
REMAILS_DEFAULT_MONTHLY_QUOTA. The real CLI in a subprocess, on a real PostgreSQL."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from remails.db import Pool, suppressions
from tests.cli.conftest import Cli


async def _after(pool: Pool, mark: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, organization_id::text AS org, action, actor_kind, actor_id, client_ip, target, details"
        " FROM audit_log WHERE id > $1 ORDER BY id",
        mark,
    )
    return [dict(r) for r in rows]


class Logged:
    """Runs a CLI command and returns the one audit entry it wrote (in organization `org`;
    "new": the one the command creates)."""

    def __init__(self, cli: Cli, pool: Pool) -> None:
        self.cli = cli
        self.pool = pool

    async def run(
        self, action: str, org: str | None, *args: str, env: dict[str, str | None] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        mark = int(await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM audit_log"))
        result = await self.cli.json(*args, env=env)
        entries = await _after(self.pool, mark)
        assert [e["action"] for e in entries] == [action], (args, entries)
        entry = entries[0]
        assert (entry["actor_kind"], entry["actor_id"], entry["client_ip"]) == ("operator", "cli", None)
        if org != "new":
            assert entry["org"] == org, (args, entry)
        return result, entry


async def test_each_cli_change_writes_one_operator_entry_without_secrets(cli: Cli, pool: Pool) -> None:
    log = Logged(cli, pool)
    org, entry = await log.run("organization.create", "new", "org", "create", "Acme")
    org_id = org["id"]
    assert entry["org"] == entry["target"] == org_id and entry["details"] == {
        "name": "Acme",
        "monthly_quota": 3000,
    }

    project, entry = await log.run("project.create", org_id, "project", "create", org_id, "shop")
    assert entry["target"] == project["id"]
    domain, entry = await log.run("domain.create", org_id, "domain", "add", project["id"], "cli-audit.test")
    assert entry["target"] == domain["id"] and entry["details"]["domain"] == "cli-audit.test"
    _, entry = await log.run("domain.verify", org_id, "domain", "verify", "cli-audit.test", "--force")
    assert entry["target"] == domain["id"] and entry["details"]["verified"] is True
    rotated, entry = await log.run("domain.rotate_key", org_id, "domain", "rotate-key", "cli-audit.test")
    assert entry["target"] == domain["id"] and len(entry["details"]["selectors"]) == 1
    credential, entry = await log.run(
        "smtp_credential.create", org_id, "smtp-credential", "create", project["id"]
    )
    assert entry["target"] == credential["id"]
    key, entry = await log.run("api_key.create", org_id, "api-key", "create", org_id, "--role", "read_only")
    assert entry["target"] == key["id"] and entry["details"]["role"] == "read_only"
    hook, entry = await log.run(
        "webhook.create",
        org_id,
        "webhook",
        "create",
        project["id"],
        "http://127.0.0.1:9/hooks/tok_clipath",
        env={"REMAILS_WEBHOOKS_ALLOW_PRIVATE": "true"},
    )
    assert entry["target"] == hook["id"] and entry["details"]["url"] == "http://127.0.0.1:9/…"
    pool_made, entry = await log.run(
        "ip_pool.create", None, "ip-pool", "create", "dedicated", "--ips", "127.0.0.5"
    )
    assert entry["target"] == "dedicated" and entry["details"] == {"ips": ["127.0.0.5"]}
    _, entry = await log.run("organization.ip_pool", org_id, "org", "set-pool", org_id, "dedicated")
    assert entry["details"] == {"ip_pool_id": pool_made["id"], "ip_pool": "dedicated"}
    _, entry = await log.run("organization.ip_pool", org_id, "org", "set-pool", org_id, "none")
    assert entry["details"] == {"ip_pool_id": None, "ip_pool": None}
    admin, entry = await log.run("admin_token.rotate", None, "admin-token", "rotate")
    assert entry["target"] == admin["id"]
    user, entry = await log.run(
        "user.create", org_id, "user", "create", "ann@acme.test", "--org", org_id, "--role", "admin"
    )
    assert entry["target"] == user["id"] and entry["details"]["email"] == "ann@acme.test"
    reset, entry = await log.run("user.password_reset", org_id, "user", "reset-password", "ann@acme.test")
    assert entry["target"] == user["id"]
    _, entry = await log.run(
        "suppression.create", org_id, "suppression", "add", org_id, "Gone@Dest.test", "--reason", "asked"
    )
    assert entry["target"] == "gone@dest.test" and entry["details"] == {"reason": "asked"}
    assert [
        s.address for s in await suppressions.list_suppressions(pool, org["id"], after=None, limit=10)
    ] == ["gone@dest.test"]
    _, entry = await log.run("suppression.delete", org_id, "suppression", "remove", org_id, "gone@dest.test")
    assert entry["target"] == "gone@dest.test"
    _, entry = await log.run("api_key.delete", org_id, "api-key", "revoke", key["id"])
    assert entry["target"] == key["id"]
    _, entry = await log.run("smtp_credential.delete", org_id, "smtp-credential", "revoke", credential["id"])
    assert entry["target"] == credential["id"]
    _, entry = await log.run("webhook.delete", org_id, "webhook", "delete", hook["id"])
    assert entry["target"] == hook["id"]
    _, entry = await log.run("domain.delete", org_id, "domain", "delete", "cli-audit.test")
    assert entry["target"] == domain["id"]
    assert await pool.fetchval("SELECT count(*) FROM domains WHERE name = 'cli-audit.test'") == 0
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE id = $1", UUID(key["id"])) == 0
    assert await pool.fetchval("SELECT count(*) FROM webhook_endpoints") == 0
    _, entry = await log.run(
        "organization.block", org_id, "org", "block", org_id, "--level", "full", "--reason", "abuse"
    )
    assert entry["details"] == {"level": "full", "reason": "abuse"}
    await log.run("organization.unblock", org_id, "org", "unblock", org_id)

    logged = json.dumps(await _after(pool, 0), default=str)
    for secret in (
        credential["password"],
        key["token"],
        key["token"].split(".")[1],
        hook["secret"],
        admin["token"],
        user["password"],
        reset["password"],
        "tok_clipath",
    ):
        assert secret not in logged
    assert rotated["id"] == domain["id"]


async def test_a_refused_cli_change_writes_nothing(cli: Cli, pool: Pool) -> None:
    org = await cli.json("org", "create", "Acme")
    await cli.json("project", "create", org["id"], "shop")
    admin = await cli.json("admin-token", "rotate")
    mark = int(await pool.fetchval("SELECT max(id) FROM audit_log"))
    await cli.refused("project", "create", org["id"], "shop")  # the name is taken
    await cli.refused("org", "set-pool", org["id"], "no-such-pool")
    await cli.refused("suppression", "add", org["id"], "not an address")
    await cli.refused("api-key", "revoke", admin["id"])  # the operator's token: rotate it instead
    assert await _after(pool, mark) == []


async def test_org_create_takes_the_default_monthly_quota_setting(cli: Cli) -> None:
    made = await cli.json("org", "create", "Free", env={"REMAILS_DEFAULT_MONTHLY_QUOTA": "1234"})
    assert made["monthly_quota"] == 1234
    explicit = await cli.json(
        "org", "create", "Paid", "--monthly-quota", "50000", env={"REMAILS_DEFAULT_MONTHLY_QUOTA": "1234"}
    )
    assert explicit["monthly_quota"] == 50000


async def test_the_operators_own_entries_are_read_with_audit_log_operator(cli: Cli, pool: Pool) -> None:
    """Changes of no organization (IP pools, the admin token) are in the log of none, read as
    `remails audit-log operator`, and never among an organization's."""
    org = await cli.json("org", "create", "Acme")
    await cli.json("ip-pool", "create", "dedicated", "--ips", "127.0.0.9")
    admin = await cli.json("admin-token", "rotate")
    shown = await cli.json("audit-log", "operator")
    assert [(e["action"], e["organization_id"]) for e in shown["entries"]] == [
        ("admin_token.rotate", None),
        ("ip_pool.create", None),
    ]
    assert shown["entries"][0]["target"] == admin["id"]
    assert admin["token"] not in json.dumps(shown)
    first = await cli.json("audit-log", "operator", "--limit", "1")
    older = await cli.json("audit-log", "operator", "--cursor", first["next_cursor"])
    assert [e["action"] for e in older["entries"]] == ["ip_pool.create"]
    mine = await cli.json("audit-log", org["id"])
    assert [e["action"] for e in mine["entries"]] == ["organization.create"]


async def test_a_forged_cursor_is_refused_in_one_line(cli: Cli) -> None:
    org = await cli.json("org", "create", "Acme")
    for forged in ("OTk5OTk5OTk5OTk5OTk5OTk5OTk", "LTE", "!!"):  # 10**20-1, -1, not base64
        line = await cli.refused("audit-log", org["id"], "--cursor", forged)
        assert "--cursor" in line
