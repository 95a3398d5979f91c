"""What the sweep and the guarded statements promise when events go missing or race: a
message whose notice was never published is still delivered, and concurrent sessions at the
last units of quota admit exactly the quota."""

from __future__ import annotations

import asyncio

import httpx
from aiosmtplib import SMTPSenderRefused
from cloudevents.http import CloudEvent

from remails.db import Pool, credentials
from remails.events import EventType
from remails.runtime import Runtime
from tests.e2e.conftest import World, message_status
from tests.support.db import as_dict
from tests.support.wait import wait_until


def _lose_received_events(runtime: Runtime) -> list[str]:
    """Make the broker refuse the first `message.received` notice of each message, as a broker
    outage would (the message row is committed already); what the sweep re-emits later goes
    through. Returns the ids of the messages whose notice was refused."""
    refused: list[str] = []
    publish = runtime.bus.publish

    async def failing(event: CloudEvent) -> None:
        message_id = str(event.get("msgid"))
        if event["type"] == EventType.MESSAGE_RECEIVED.value and message_id not in refused:
            refused.append(message_id)
            raise ConnectionError("broker unavailable")
        await publish(event)

    runtime.bus.publish = failing  # type: ignore[method-assign]
    return refused


async def _status_is(pool: Pool, message_id: str, status: str) -> bool:
    return await message_status(pool, message_id) == status


async def test_smtp_message_whose_notice_was_lost_is_delivered_by_the_sweep(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    refused = _lose_received_events(runtime)
    message_id = await world.submit(runtime, tenant, ["ada@dest.test"])
    assert refused, "the edge did not publish through the broker"
    assert runtime.db is not None
    pool = runtime.db.pool
    await wait_until(lambda: len(sink.received) == 1, bound=30)
    await wait_until(lambda: _status_is(pool, message_id, "delivered"))


async def test_http_message_whose_notice_was_lost_is_delivered_by_the_sweep(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.api is not None
    _, token = await credentials.create_api_key(runtime.db.pool, tenant.org_id, "maintainer")
    refused = _lose_received_events(runtime)
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        response = await client.post(
            f"/v1/projects/{tenant.project_id}/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={"from": f"app@{tenant.domain}", "to": ["ada@dest.test"], "subject": "hi", "text": "x"},
        )
    assert response.status_code == 202, response.text
    assert refused, "the send function did not publish through the broker"
    pool = runtime.db.pool
    await wait_until(lambda: len(sink.received) == 1, bound=30)
    await wait_until(lambda: _status_is(pool, response.json()["id"], "delivered"))


async def test_concurrent_sessions_at_the_last_units_of_quota_admit_exactly_the_quota(world: World) -> None:
    await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test", quota=25)
    assert runtime.db is not None
    pool = runtime.db.pool
    await pool.execute("UPDATE organizations SET quota_used = 20 WHERE id = $1", tenant.org_id)
    results = await asyncio.gather(
        *(world.submit(runtime, tenant, [f"r{i}@dest.test"], subject=f"n{i}") for i in range(30)),
        return_exceptions=True,
    )
    # The edge's quota check reads facts at most FACTS_SECONDS old: a session that starts after
    # they were refreshed with the quota counted may be refused early, and only with 452 4.5.3.
    ids = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(
        isinstance(r, SMTPSenderRefused) and (r.code, r.message[:5]) == (452, "4.5.3") for r in refused
    )
    assert len(set(ids)) == len(ids) >= 5

    async def settled() -> bool:
        rows = await pool.fetch("SELECT status::text FROM messages WHERE organization_id = $1", tenant.org_id)
        return all(r["status"] in ("delivered", "held") for r in rows)

    await wait_until(settled, bound=60)
    counts = await as_dict(
        pool,
        "SELECT status::text, count(*) FROM messages WHERE organization_id = $1 GROUP BY 1",
        tenant.org_id,
    )
    assert counts == {"delivered": 5, "held": len(ids) - 5}
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 25
