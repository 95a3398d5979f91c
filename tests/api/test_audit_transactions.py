"""A change and its audit entry commit together or not at all: with the audit insert made to
fail (a trigger installed in the test database), the change is rolled back — for domains
added, verified and re-keyed, webhooks created, and changes made in the dashboard."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from remails.config import Settings
from remails.db import Pool, orgs
from tests.api.conftest import Api, make_api
from tests.web.conftest import Site, add_user, csrf_of, make_site

_REFUSE = """
CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.action = current_setting('test.refuse_action') THEN
        RAISE EXCEPTION 'audit write refused for the test';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION test_refuse_audit();
"""


async def refuse_audit(pool: Pool, action: str) -> None:
    """From now on, the database refuses to append `action` to the audit log."""
    await pool.execute(_REFUSE)
    database = await pool.fetchval("SELECT current_database()")
    await pool.execute(f"ALTER DATABASE \"{database}\" SET test.refuse_action = '{action}'")
    await pool.expire_connections()  # the setting applies to new sessions


async def failed(call: Any) -> None:
    """The request fails (a 500, or the app's exception through the ASGI transport)."""
    try:
        answer: httpx.Response = await call
    except Exception as exc:
        assert "audit write refused" in str(exc)
        return
    assert answer.status_code == 500, answer.text


@pytest.fixture
async def hooks_api(pool: Pool, settings: Settings) -> AsyncIterator[Api]:
    made, client = await make_api(pool, settings, webhooks_allow_private=True)
    yield made
    await client.aclose()


async def test_a_domain_is_not_added_when_its_entry_cannot_be_written(api: Api, pool: Pool) -> None:
    await refuse_audit(pool, "domain.create")
    body = {"domain": "rolled-back.test", "project_ids": [str(api.acme.project_id)]}
    await failed(api.call("POST", f"/v1/organizations/{api.acme.org_id}/domains", api.acme_admin, json=body))
    assert await pool.fetchval("SELECT count(*) FROM domains WHERE name = 'rolled-back.test'") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_a_verification_is_not_stored_when_its_entry_cannot_be_written(api: Api, pool: Pool) -> None:
    before = await pool.fetchrow(
        "SELECT id, verified_at, verification, last_checked_at, return_path_verification"
        " FROM domains WHERE name = 'acme.test'"
    )
    assert before is not None and before["verified_at"] is not None
    await refuse_audit(pool, "domain.verify")
    # The loopback DNS has no records for acme.test: stored, this check would unverify it.
    await failed(api.call("POST", f"/v1/domains/{before['id']}/verify", api.acme_admin))
    after = await pool.fetchrow(
        "SELECT id, verified_at, verification, last_checked_at, return_path_verification"
        " FROM domains WHERE name = 'acme.test'"
    )
    assert after == before


async def test_a_key_rotation_is_not_started_when_its_entry_cannot_be_written(api: Api, pool: Pool) -> None:
    domain_id = await pool.fetchval("SELECT id FROM domains WHERE name = 'acme.test'")
    await refuse_audit(pool, "domain.rotate_key")
    await failed(api.call("POST", f"/v1/domains/{domain_id}/rotate-key", api.acme_admin))
    assert await pool.fetchval("SELECT count(*) FROM dkim_keys WHERE domain_id = $1", domain_id) == 0


async def test_a_webhook_is_not_created_when_its_entry_cannot_be_written(hooks_api: Api, pool: Pool) -> None:
    await refuse_audit(pool, "webhook.create")
    body = {"url": "http://127.0.0.1:9/hook", "events": ["message.delivered"]}
    await failed(
        hooks_api.call(
            "POST", f"/v1/projects/{hooks_api.acme.project_id}/webhooks", hooks_api.acme_admin, json=body
        )
    )
    assert await pool.fetchval("SELECT count(*) FROM webhook_endpoints") == 0


async def test_without_the_refusal_the_same_changes_are_made_and_logged(hooks_api: Api, pool: Pool) -> None:
    """The control: the requests above succeed when the audit log takes their entries."""
    api = hooks_api
    body = {"domain": "kept.test", "project_ids": [str(api.acme.project_id)]}
    added = await api.call("POST", f"/v1/organizations/{api.acme.org_id}/domains", api.acme_admin, json=body)
    assert added.status_code == 201
    domain_id = added.json()["id"]
    assert (await api.call("POST", f"/v1/domains/{domain_id}/verify", api.acme_admin)).status_code == 200
    assert (await api.call("POST", f"/v1/domains/{domain_id}/rotate-key", api.acme_admin)).status_code == 200
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["message.delivered"]}
    made = await api.call("POST", f"/v1/projects/{api.acme.project_id}/webhooks", api.acme_admin, json=hook)
    assert made.status_code == 201
    hook_id = made.json()["id"]
    assert (await api.call("POST", f"/v1/webhooks/{hook_id}/test", api.acme_admin)).status_code == 202
    rows = await pool.fetch("SELECT action, target FROM audit_log ORDER BY id")
    assert [(r["action"], r["target"]) for r in rows] == [
        ("domain.create", domain_id),
        ("domain.verify", domain_id),
        ("domain.rotate_key", domain_id),
        ("webhook.create", hook_id),
        ("webhook.test", hook_id),
    ]


async def _dashboard(pool: Pool, settings: Settings) -> tuple[Site, str]:
    site = await make_site(pool, settings)
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    page = await site.client.get(f"/orgs/{site.acme.org_id}/members")
    return site, csrf_of(page.text)


async def test_a_dashboard_change_is_not_made_when_its_entry_cannot_be_written(
    pool: Pool, settings: Settings
) -> None:
    site, csrf = await _dashboard(pool, settings)
    try:
        await refuse_audit(pool, "project.create")
        url = f"/orgs/{site.acme.org_id}/projects"
        await failed(site.client.post(url, data={"name": "rolled back", "csrf": csrf}))
        assert [p.name for p in await orgs.list_projects(pool, site.acme.org_id)] == ["main"]
    finally:
        await site.client.aclose()


async def test_an_invitation_is_not_made_when_its_entry_cannot_be_written(
    pool: Pool, settings: Settings
) -> None:
    site, csrf = await _dashboard(pool, settings)
    try:
        await refuse_audit(pool, "invitation.create")
        url = f"/orgs/{site.acme.org_id}/members/invite"
        await failed(site.client.post(url, data={"email": "carol@acme.test", "role": "admin", "csrf": csrf}))
        assert await pool.fetchval("SELECT count(*) FROM invitations") == 0
    finally:
        await site.client.aclose()


async def test_a_sign_in_starts_no_session_when_its_entry_cannot_be_written(
    pool: Pool, settings: Settings
) -> None:
    site = await make_site(pool, settings)
    try:
        await add_user(site.pool, "ann@acme.test", org=site.acme)
        await refuse_audit(pool, "user.login")
        await failed(site.login("ann@acme.test"))
        assert await pool.fetchval("SELECT count(*) FROM user_sessions") == 0
    finally:
        await site.client.aclose()


@pytest.mark.parametrize("forged", ["99999999999999999999", "-99999999999999999999", "0"])
async def test_a_forged_cursor_beyond_any_entry_id_is_a_422_naming_it(api: Api, forged: str) -> None:
    """A cursor is an entry id in base64; one no bigint holds is refused like any other
    forgery, not passed to the database (where it failed as a 500)."""
    cursor = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=")
    url = f"/v1/organizations/{api.acme.org_id}/audit-log"
    answer = await api.call("GET", url, api.acme_admin, params={"cursor": cursor})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "cursor"


async def test_a_block_reason_without_a_block_is_refused_not_logged_as_a_change(api: Api) -> None:
    """The reason is stored only with a block: alone, it used to be answered 200 and logged as
    an `organization.update` that changed nothing."""
    url = f"/v1/organizations/{api.acme.org_id}"
    answer = await api.call("PATCH", url, api.admin_token, json={"block_reason": "looks like spam"})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "block_reason", answer.text
    logged = await api.call("GET", f"{url}/audit-log", api.admin_token)
    assert logged.json()["entries"] == []
    blocked = await api.call(
        "PATCH", url, api.admin_token, json={"block_status": "no_sending", "block_reason": "spam"}
    )
    assert blocked.status_code == 200 and blocked.json()["block_reason"] == "spam"
