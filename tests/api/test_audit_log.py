"""The audit log: an entry for each kind of change through the API and the CLI, with the right
actor and client address, never a secret; paging and filters; the database refuses to change
or delete entries; a `full` block refuses every write while reads go on. Real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from remails.db import Pool
from tests.api.conftest import Api
from tests.support.db import one_row
from tests.support.dnsserver import LocalDns
from tests.test_cli import Cli


async def _entries(api: Api, org_id: Any, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await api.call(
            "GET", f"/v1/organizations/{org_id}/audit-log", token or api.admin_token, params=query
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["entries"]) <= 2
        found += body["entries"]
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def _key_id(token: str) -> str:
    """The API key's id from its token `rmk_<hex id>.<secret>`."""
    from uuid import UUID

    return str(UUID(token.removeprefix("rmk_").split(".")[0]))


async def test_each_kind_of_change_is_logged_with_its_actor_and_no_secret(
    api: Api, dsn: str, tmp_path: Path, local_dns: LocalDns
) -> None:
    org_id = api.acme.org_id
    admin = api.acme_admin
    project = (
        await api.call("POST", f"/v1/organizations/{org_id}/projects", admin, json={"name": "shop"})
    ).json()
    renamed = await api.call("PATCH", f"/v1/projects/{project['id']}", admin, json={"name": "store"})
    assert renamed.status_code == 200
    key = await api.call("POST", f"/v1/organizations/{org_id}/api-keys", admin, json={"role": "read_only"})
    credential = await api.call("POST", f"/v1/projects/{project['id']}/smtp-credentials", admin, json={})
    assert key.status_code == credential.status_code == 201
    suppression = {"address": "Gone@Dest.test", "reason": "asked"}
    assert (
        await api.call("POST", f"/v1/organizations/{org_id}/suppressions", admin, json=suppression)
    ).status_code == 201
    assert (
        await api.call("DELETE", f"/v1/organizations/{org_id}/suppressions/gone@dest.test", admin)
    ).status_code == 204
    email = await api.call(
        "PATCH", f"/v1/organizations/{org_id}", admin, json={"notification_email": "ops@acme.test"}
    )
    assert email.status_code == 200 and email.json()["notification_email"] == "ops@acme.test"
    blocked = await api.call(
        "PATCH", f"/v1/organizations/{org_id}", api.admin_token, json={"block_status": "no_sending"}
    )
    assert blocked.status_code == 200
    assert (await api.call("DELETE", f"/v1/api-keys/{key.json()['id']}", admin)).status_code == 204
    assert (await api.call("DELETE", f"/v1/projects/{project['id']}", admin)).status_code == 204
    refused = await api.call("DELETE", f"/v1/projects/{project['id']}", admin)  # gone: nothing changed
    assert refused.status_code == 404
    cli = Cli(dsn, tmp_path / "data", local_dns)
    await cli.json("org", "unblock", str(org_id))

    entries = await _entries(api, org_id)
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)  # newest first
    actions = [(e["action"], e["actor"]["kind"], e["actor"]["id"]) for e in reversed(entries)]
    by_admin = ("api_key", _key_id(admin))
    operator = ("operator", _key_id(api.admin_token))
    assert actions == [
        ("project.create", *by_admin),
        ("project.update", *by_admin),
        ("api_key.create", *by_admin),
        ("smtp_credential.create", *by_admin),
        ("suppression.create", *by_admin),
        ("suppression.delete", *by_admin),
        ("organization.update", *by_admin),
        ("organization.block", *operator),
        ("api_key.delete", *by_admin),
        ("project.delete", *by_admin),
        ("organization.unblock", "operator", "cli"),
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["project.create"]["target"] == project["id"]
    assert by_action["project.update"]["details"] == {"name": "store"}
    assert by_action["organization.block"]["details"] == {"block_status": "no_sending"}
    assert by_action["project.create"]["client_ip"] == "127.0.0.1"  # httpx's ASGI client address
    assert by_action["organization.unblock"]["client_ip"] is None  # the CLI has none
    logged = json.dumps(entries)
    assert key.json()["token"] not in logged and credential.json()["password"] not in logged
    assert key.json()["token"].split(".")[1] not in logged

    only = await _entries(api, org_id, action="project.")
    assert [e["action"] for e in only] == ["project.delete", "project.update", "project.create"]
    cli_only = await _entries(api, org_id, actor="operator:cli")
    assert [e["action"] for e in cli_only] == ["organization.unblock"]
    shown = await cli.json("audit-log", str(org_id), "--action", "organization.block")
    assert [e["action"] for e in shown["entries"]] == ["organization.block"]
    assert shown["entries"][0]["actor"] == {"kind": "operator", "id": _key_id(api.admin_token)}


async def test_the_audit_log_is_for_the_organizations_admins_only(api: Api) -> None:
    org_id = api.acme.org_id
    await api.call("POST", f"/v1/organizations/{org_id}/projects", api.acme_admin, json={"name": "x"})
    assert (
        await api.call("GET", f"/v1/organizations/{org_id}/audit-log", api.acme_reader)
    ).status_code == 403
    assert (
        await api.call("GET", f"/v1/organizations/{org_id}/audit-log", api.other_admin)
    ).status_code == 404
    assert await _entries(api, api.other.org_id) == []  # nothing of acme shows in other's log
    bad = await api.call(
        "GET", f"/v1/organizations/{org_id}/audit-log", api.acme_admin, params={"cursor": "!!"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"


async def test_a_failed_change_leaves_no_entry(api: Api) -> None:
    org_id = api.acme.org_id
    assert (
        await api.call("POST", f"/v1/organizations/{org_id}/projects", api.acme_admin, json={"name": "a"})
    ).status_code == 201
    taken = await api.call("POST", f"/v1/organizations/{org_id}/projects", api.acme_admin, json={"name": "a"})
    assert taken.status_code == 409
    assert [e["action"] for e in await _entries(api, org_id)] == ["project.create"]


async def test_the_database_refuses_to_change_or_delete_audit_entries(api: Api, pool: Pool) -> None:
    await api.call(
        "POST", f"/v1/organizations/{api.acme.org_id}/projects", api.acme_admin, json={"name": "p"}
    )
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 1
    for statement in (
        "UPDATE audit_log SET action = 'nothing.happened'",
        "UPDATE audit_log SET at = now() - interval '10 years'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(statement)
    # Naming a retention by hand does not open a door to recent entries either.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('remails.audit_purge_days', '1', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log")
    row = await one_row(pool, "SELECT action, at FROM audit_log")
    assert row["action"] == "project.create" and (datetime.now(UTC) - row["at"]).total_seconds() < 60


async def test_a_full_block_refuses_every_write_and_keeps_reads(
    api: Api, dsn: str, tmp_path: Path, local_dns: LocalDns
) -> None:
    org_id = api.acme.org_id
    cli = Cli(dsn, tmp_path / "data", local_dns)
    blocked = await cli.json("org", "block", str(org_id), "--level", "full", "--reason", "abuse report 42")
    assert blocked["block_status"] == "full_freeze"
    writes = [
        ("POST", f"/v1/organizations/{org_id}/projects", {"name": "new"}),
        ("PATCH", f"/v1/organizations/{org_id}", {"name": "renamed"}),
        ("POST", f"/v1/organizations/{org_id}/api-keys", {"role": "read_only"}),
        ("POST", f"/v1/organizations/{org_id}/suppressions", {"address": "a@b.test", "reason": "x"}),
        (
            "POST",
            f"/v1/projects/{api.acme.project_id}/messages",
            {"from": "a@acme.test", "to": ["u@d.test"], "text": "x"},
        ),
    ]
    for method, url, body in writes:
        refused = await api.call(method, url, api.acme_admin, json=body)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "organization_blocked", url
    assert (await api.call("GET", f"/v1/organizations/{org_id}", api.acme_admin)).status_code == 200
    assert (await api.call("GET", f"/v1/organizations/{org_id}/projects", api.acme_reader)).status_code == 200
    assert (
        await api.call(
            "POST", f"/v1/organizations/{api.other.org_id}/projects", api.other_admin, json={"name": "n"}
        )
    ).status_code == 201
    entry = (await _entries(api, org_id, action="organization.block"))[0]
    assert entry["details"] == {"level": "full", "reason": "abuse report 42"}
    assert entry["actor"] == {"kind": "operator", "id": "cli"}

    await cli.json("org", "block", str(org_id), "--level", "sending", "--reason", "spam")
    ok = await api.call("POST", f"/v1/organizations/{org_id}/projects", api.acme_admin, json={"name": "new"})
    assert ok.status_code == 201  # `sending` stops mail, not changes
    send = {"from": "a@acme.test", "to": ["u@d.test"], "text": "x"}
    refused = await api.call(
        "POST", f"/v1/projects/{api.acme.project_id}/messages", api.acme_admin, json=send
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "organization_blocked"
    await cli.json("org", "unblock", str(org_id))
    assert (
        await api.call("PATCH", f"/v1/organizations/{org_id}", api.acme_admin, json={"name": "renamed"})
    ).status_code == 200


async def test_an_organization_shows_its_quota_and_a_new_one_gets_the_default_plan(api: Api) -> None:
    made = await api.call("POST", "/v1/organizations", api.admin_token, json={"name": "Free"})
    assert made.status_code == 201
    quota = made.json()["quota"]
    assert (quota["limit"], quota["used"]) == (3000, 0)
    now = datetime.now(UTC)
    first = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    assert datetime.fromisoformat(quota["resets_at"].replace("Z", "+00:00")) == first
    await api.pool.execute("UPDATE organizations SET quota_used = 7 WHERE id = $1", api.acme.org_id)
    shown = (await api.call("GET", f"/v1/organizations/{api.acme.org_id}", api.acme_reader)).json()["quota"]
    assert shown["used"] == 7


async def test_notification_email_is_one_address_and_null_clears_it(api: Api) -> None:
    url = f"/v1/organizations/{api.acme.org_id}"
    bad = await api.call("PATCH", url, api.acme_admin, json={"notification_email": "not an address"})
    assert bad.status_code == 422 and "notification_email" in bad.text
    assert (await api.call("PATCH", url, api.acme_admin, json={"notification_email": "a@acme.test"})).json()[
        "notification_email"
    ] == "a@acme.test"
    kept = await api.call("PATCH", url, api.acme_admin, json={"name": "Acme"})
    assert kept.json()["notification_email"] == "a@acme.test"  # not named: unchanged
    cleared = await api.call("PATCH", url, api.acme_admin, json={"notification_email": None})
    assert cleared.json()["notification_email"] is None


async def test_webhook_changes_are_logged_without_the_secret_or_the_urls_token(
    pool: Pool, settings: Any
) -> None:
    from tests.api.conftest import make_api

    api, client = await make_api(pool, settings, webhooks_allow_private=True)
    try:
        url = "http://127.0.0.1:9/hooks/tok_3kY7secretpath?key=sekrit123"
        made = await api.call(
            "POST",
            f"/v1/projects/{api.acme.project_id}/webhooks",
            api.acme_admin,
            json={"url": url, "events": ["message.delivered"]},
        )
        assert made.status_code == 201, made.text
        hook = made.json()
        rotated = await api.call("POST", f"/v1/webhooks/{hook['id']}/rotate-secret", api.acme_admin)
        assert rotated.status_code == 200
        assert (await api.call("DELETE", f"/v1/webhooks/{hook['id']}", api.acme_admin)).status_code == 204
        entries = await _entries(api, api.acme.org_id, action="webhook.")
        assert [(e["action"], e["target"]) for e in entries] == [
            ("webhook.delete", hook["id"]),
            ("webhook.rotate_secret", hook["id"]),
            ("webhook.create", hook["id"]),
        ]
        logged = json.dumps(entries)
        assert entries[-1]["details"]["url"] == "http://127.0.0.1:9/…"
        for secret in (hook["secret"], rotated.json()["secret"], "tok_3kY7secretpath", "sekrit123"):
            assert secret not in logged
    finally:
        await client.aclose()


async def test_the_operator_blocks_through_the_api_with_a_reason_the_organization_sees(api: Api) -> None:
    url = f"/v1/organizations/{api.acme.org_id}"
    body = {"block_status": "no_sending", "block_reason": "complaints above 0.3 %"}
    assert (await api.call("PATCH", url, api.acme_admin, json=body)).status_code == 403  # operator only
    blocked = await api.call("PATCH", url, api.admin_token, json=body)
    assert blocked.status_code == 200 and blocked.json()["block_reason"] == "complaints above 0.3 %"
    shown = (await api.call("GET", url, api.acme_reader)).json()
    assert (shown["block_status"], shown["block_reason"]) == ("no_sending", "complaints above 0.3 %")
    entry = (await _entries(api, api.acme.org_id, action="organization.block"))[0]
    assert entry["details"] == body and entry["actor"]["kind"] == "operator"
    lifted = await api.call("PATCH", url, api.admin_token, json={"block_status": "not_blocked"})
    assert (lifted.json()["block_status"], lifted.json()["block_reason"]) == ("not_blocked", None)
    assert (await api.call("GET", url, api.acme_reader)).json()["block_reason"] is None
