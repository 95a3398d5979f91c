"""The operator CLI as a user runs it: a subprocess with --json, against a real database and DNS."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from remails.db import Pool
from tests.support.dnsserver import LocalDns


class Cli:
    def __init__(self, dsn: str, data_dir: Path, dns: LocalDns) -> None:
        self.env = {
            **os.environ,
            "REMAILS_DATABASE_URL": dsn,
            "REMAILS_DATA_DIR": str(data_dir),
            "REMAILS_DNS_SERVERS": dns.servers,
            "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        }

    async def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "remails.cli", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def json(self, *args: str) -> dict[str, Any]:
        result = await self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout  # exactly one JSON object
        parsed: dict[str, Any] = json.loads(lines[0])
        return parsed


@pytest.fixture
def cli(dsn: str, tmp_path: Path, local_dns: LocalDns) -> Cli:
    return Cli(dsn, tmp_path / "data", local_dns)


async def test_migrate_is_idempotent(cli: Cli) -> None:
    assert (await cli.json("migrate"))["applied"] == []  # the template is already migrated
    assert (await cli.json("migrate"))["applied"] == []


async def test_operator_flow_from_org_to_verified_domain(cli: Cli, local_dns: LocalDns, pool: Pool) -> None:
    org = await cli.json("org", "create", "Acme", "--monthly-quota", "500")
    assert org["name"] == "Acme" and org["monthly_quota"] == 500 and org["id"]
    project = await cli.json("project", "create", org["id"], "main")
    assert project["organization_id"] == org["id"]

    domain = await cli.json("domain", "add", project["id"], "Example.TEST")
    assert domain["domain"] == "example.test" and domain["verified"] is False
    records = {r["name"]: r for r in domain["dns_records"] if r["name"] != "rp.example.test"}  # return path
    dkim_name = f"{domain['dkim_selector']}._domainkey.example.test"
    assert set(records) == {dkim_name, "example.test", "_dmarc.example.test"}
    assert all(set(r) == {"type", "name", "value"} and r["type"] == "TXT" for r in records.values())
    assert records["example.test"]["value"] == "v=spf1 ip4:127.0.0.2 ~all"

    unverified = await cli.run("domain", "verify", "example.test", "--json")
    assert unverified.returncode == 1  # printed, but not a success
    missing = json.loads(unverified.stdout)
    assert missing["verified"] is False
    assert missing["checks"]["dkim"] == {
        "ok": False,
        "found": [],
        "expected": records[dkim_name]["value"],
        "reason": f"no TXT record at {dkim_name}: the name does not exist (NXDOMAIN)",
    }

    for record in records.values():
        local_dns.zone.txt(record["name"], record["value"])
    verified = await cli.json("domain", "verify", "example.test")
    assert verified["verified"] is True
    assert all(check["ok"] for check in verified["checks"].values())
    assert await pool.fetchval("SELECT verified_at IS NOT NULL FROM domains") is True

    credential = await cli.json("smtp-credential", "create", project["id"])
    assert credential["username"] and len(credential["password"]) >= 24
    key = await cli.json("api-key", "create", org["id"], "--role", "read_only")
    assert key["role"] == "read_only" and key["token"].startswith("rmk_")
    ip_pool = await cli.json("ip-pool", "create", "dedicated", "--ips", "127.0.0.5,127.0.0.6")
    assert ip_pool["ips"] == ["127.0.0.5", "127.0.0.6"]
    assigned = await cli.json("org", "set-pool", org["id"], "dedicated")
    assert assigned["ip_pool_id"] == ip_pool["id"]
    stored = await pool.fetchval("SELECT secret_sha256 FROM smtp_credentials")
    assert credential["password"].encode() not in stored


async def test_domain_verify_force_marks_it_verified(cli: Cli) -> None:
    org = await cli.json("org", "create", "Acme")
    project = await cli.json("project", "create", org["id"], "main")
    await cli.json("domain", "add", project["id"], "forced.test")
    result = await cli.json("domain", "verify", "forced.test", "--force")
    assert result["verified"] is True and result["forced"] is True


async def test_message_show_reports_status_recipients_and_attempts(
    cli: Cli, pool: Pool, tmp_path: Path
) -> None:
    from remails.config import load_settings
    from tests.factories import make_tenant, store_message

    tenant = await make_tenant(pool, load_settings(data_dir=cli.env["REMAILS_DATA_DIR"]))
    message_id = await store_message(pool, tenant, ["a@dest.test"])
    shown = await cli.json("message", "show", str(message_id))
    assert shown["id"] == str(message_id) and shown["status"] == "received"
    assert shown["recipients"][0]["address"] == "a@dest.test"
    assert shown["attempts"] == 0 and shown["attempt_log"] == []
    assert "raw" not in shown


async def test_errors_are_one_line(cli: Cli) -> None:
    result = await cli.run("project", "create", "00000000-0000-0000-0000-000000000000", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == "remails: no organization 00000000-0000-0000-0000-000000000000"
    bad = await cli.run("migrate", env={"REMAILS_DELIVERY_PORT": "0"})
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("remails: REMAILS_DELIVERY_PORT: ")
    assert len(bad.stderr.strip().splitlines()) == 1


async def test_webhook_create_shows_the_secret_once_and_refuses_private_targets(cli: Cli) -> None:
    org = await cli.json("org", "create", "Acme")
    project = await cli.json("project", "create", org["id"], "main")
    refused = await cli.run("webhook", "create", project["id"], "https://127.0.0.1/hook")
    assert refused.returncode == 1 and "private or internal" in refused.stderr
    allowed = await cli.run(
        "webhook",
        "create",
        project["id"],
        "http://127.0.0.1:9/hook",
        "--events",
        "message.bounced",
        "--json",
        env={"REMAILS_WEBHOOKS_ALLOW_PRIVATE": "true"},
    )
    assert allowed.returncode == 0, allowed.stderr
    endpoint = json.loads(allowed.stdout)
    assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["message.bounced"]
    listed = await cli.run("webhook", "list", project["id"], "--json")
    assert endpoint["secret"] not in listed.stdout
    assert json.loads(listed.stdout)["webhooks"][0]["id"] == endpoint["id"]
