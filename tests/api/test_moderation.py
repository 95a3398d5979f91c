"""Moderation at every step: a blocked organization's messages stop at validate, quota, route,
the sender's claim and retry (409), held with the reason; lifting the block through the API
resumes each where it stopped. The handlers and statements on a real PostgreSQL."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from remails.db import Pool, egress, pipeline
from remails.events import EventType, MessageEvent, make_event
from remails_functions import quota, route, validate
from tests.api.conftest import Api
from tests.factories import Tenant, store_message
from tests.support.db import one_row

NODE, IP = "node-a", "127.0.0.2"


async def _in_state(pool: Pool, tenant: Tenant, status: str) -> UUID:
    message_id = await store_message(pool, tenant, ["user@dest.test"])
    await pool.execute(
        "UPDATE messages SET status = $2::message_status, outbound_ip = $3::inet WHERE id = $1",
        message_id,
        status,
        IP if status == "routed" else None,
    )
    return message_id


async def _row(pool: Pool, message_id: UUID) -> tuple[str, str | None, str | None]:
    row = await one_row(
        pool, "SELECT status::text, reason, resume_status::text FROM messages WHERE id = $1", message_id
    )
    return row["status"], row["reason"], row["resume_status"]


def _event(tenant: Tenant, message_id: UUID, event_type: EventType) -> Any:
    data = MessageEvent(message_id=message_id, organization_id=tenant.org_id, project_id=tenant.project_id)
    return make_event(event_type, data)


async def test_every_step_holds_a_blocked_organizations_message_and_unblocking_resumes_it(api: Api) -> None:
    pool, tenant = api.pool, api.acme
    ctx = api.client._transport.app.state.ctx  # type: ignore[attr-defined]  # the API's context
    await egress.register_node(pool, NODE, [IP])  # a live egress source: route would route
    await pool.execute(
        "INSERT INTO webhook_endpoints (project_id, url, events, secret_sealed)"
        " VALUES ($1, 'https://hooks.acme.test/', ARRAY['message.held'], '\\x00'::bytea)",
        tenant.project_id,
    )
    received = await _in_state(pool, tenant, "received")
    validated = await _in_state(pool, tenant, "validated")
    admitted = await _in_state(pool, tenant, "admitted")
    routed = await _in_state(pool, tenant, "routed")
    deferred = await _in_state(pool, tenant, "deferred")
    unrelated = await _in_state(pool, api.other, "admitted")  # another tenant: never touched
    quota_before = await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id)
    blocked = await api.call(
        "PATCH", f"/v1/organizations/{tenant.org_id}", api.admin_token, json={"block_status": "no_sending"}
    )
    assert blocked.status_code == 200, blocked.text

    held = [
        await validate.handle(ctx, _event(tenant, received, EventType.MESSAGE_RECEIVED)),
        await quota.handle(ctx, _event(tenant, validated, EventType.MESSAGE_VALIDATED)),
        await route.handle(ctx, _event(tenant, admitted, EventType.MESSAGE_ADMITTED)),
    ]
    assert [e["type"] if e else None for e in held] == ["message.held"] * 3
    assert await pipeline.claim_for_sending(pool, routed, IP, NODE, 30) is None
    reason = pipeline.BLOCKED_REASON
    assert await _row(pool, received) == ("held", reason, "received")
    assert await _row(pool, validated) == ("held", reason, "validated")
    assert await _row(pool, admitted) == ("held", reason, "admitted")
    assert await _row(pool, routed) == ("held", reason, "admitted")  # routed again when released
    told = await pool.fetch(
        "SELECT message_id, payload->'data'->>'status' AS status FROM webhook_deliveries"
        " WHERE event_type = 'message.held'"
    )
    assert {(r["message_id"], r["status"]) for r in told} == {
        (m, "held") for m in (received, validated, admitted, routed)
    }
    after = await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id)
    assert after == quota_before  # the quota step counted nothing
    shown = await api.call("GET", f"/v1/messages/{admitted}", api.acme_reader)
    assert (shown.json()["status"], shown.json()["reason"]) == ("held", reason)

    retry = await api.call("POST", f"/v1/messages/{deferred}/retry", api.acme_admin)
    assert retry.status_code == 409 and retry.json()["error"]["code"] == "organization_blocked"
    assert (await _row(pool, deferred))[0] == "deferred"
    assert await route.handle(ctx, _event(api.other, unrelated, EventType.MESSAGE_ADMITTED)) is not None

    api.publisher.events.clear()
    lifted = await api.call(
        "PATCH", f"/v1/organizations/{tenant.org_id}", api.admin_token, json={"block_status": "not_blocked"}
    )
    assert lifted.status_code == 200
    assert [(await _row(pool, m))[0] for m in (received, validated, admitted, routed)] == [
        "received",
        "validated",
        "admitted",
        "admitted",
    ]
    resumed = {(e["type"], e["msgid"]) for e in api.publisher.events}
    assert resumed == {
        ("message.received", str(received)),
        ("message.validated", str(validated)),
        ("message.admitted", str(admitted)),
        ("message.admitted", str(routed)),
    }
    assert (await api.call("POST", f"/v1/messages/{deferred}/retry", api.acme_admin)).status_code == 202
