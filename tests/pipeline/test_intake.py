"""intake: validate, quota and route as one statement for a batch of received messages, with
the guards of the three steps. On a real PostgreSQL, through the handler the runtime wires."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

from cloudevents.http import CloudEvent

from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, egress, pipeline, suppressions
from remails.db.messages import NewMessage, insert_message
from remails.events import EventType, MessageEvent, make_event
from remails_functions import intake
from tests.factories import Tenant, make_tenant, store_message
from tests.support.db import as_dict, one_row
from tests.support.recording import RecordingPublisher
from tests.support.wait import wait_until

NODE, IP = "node-a", "127.0.0.2"


def _ctx(pool: Pool, settings: Settings) -> Context:
    return Context(
        settings, pool, RecordingPublisher(), load_master_key(settings.secret_key, settings.data_dir)
    )


def _received(tenant: Tenant, message_id: UUID) -> CloudEvent:
    data = MessageEvent(message_id=message_id, organization_id=tenant.org_id, project_id=tenant.project_id)
    return make_event(EventType.MESSAGE_RECEIVED, data)


async def _from(pool: Pool, tenant: Tenant, sender_domain: str) -> UUID:
    raw = f"From: a@{sender_domain}\r\nSubject: hi\r\nMessage-ID: <{uuid4()}@x>\r\n\r\nbody\r\n".encode()
    new = NewMessage(tenant.org_id, tenant.project_id, f"a@{sender_domain}", ["u@dest.test"], raw, "<x@x>")
    return await insert_message(pool, new, 3600)


async def _statuses(pool: Pool, ids: list[UUID]) -> dict[UUID, str]:
    return await as_dict(pool, "SELECT id, status::text FROM messages WHERE id = ANY($1::uuid[])", ids)


async def test_a_batch_is_validated_counted_and_routed_in_one_go(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "acme.test", quota=5)
    await egress.register_node(pool, NODE, [IP])
    await suppressions.add_suppression(pool, tenant.org_id, "gone@dest.test", "hard bounce")
    fine = [await store_message(pool, tenant, [f"u{i}@dest.test"]) for i in range(3)]
    partly = await store_message(pool, tenant, ["ok@dest.test", "Gone@dest.test"])
    spoofed = await _from(pool, tenant, "not-ours.test")
    everyone_suppressed = await store_message(pool, tenant, ["gone@dest.test"])
    batch = [*fine, partly, spoofed, everyone_suppressed]

    replies = await intake.handle_batch(_ctx(pool, settings), [_received(tenant, m) for m in batch])

    assert await _statuses(pool, batch) == {
        **{m: "routed" for m in [*fine, partly]},
        spoofed: "rejected",
        everyone_suppressed: "rejected",
    }
    assert {(e["type"], e["msgid"]) for e in replies} == {
        *{("message.routed", str(m)) for m in [*fine, partly]},
        ("message.rejected", str(spoofed)),
        ("message.rejected", str(everyone_suppressed)),
    }
    assert {e["outboundip"] for e in replies if e["type"] == "message.routed"} == {IP}
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE outbound_ip = $1::inet", IP) == 4
    reason = await pool.fetchval("SELECT reason FROM messages WHERE id = $1", spoofed)
    assert reason == "envelope sender domain not-ours.test is not verified for this project"
    recipients = await as_dict(
        pool, "SELECT address, status::text FROM recipients WHERE message_id = $1", partly
    )
    assert recipients == {"ok@dest.test": "pending", "Gone@dest.test": "suppressed"}
    # Only the four accepted messages count against the quota (the rejected ones do not).
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 4
    kinds = await pool.fetch(
        "SELECT kind, details FROM notifications WHERE organization_id = $1", tenant.org_id
    )
    assert [(k["kind"], k["details"]["used"]) for k in kinds] == [("quota.warning", 4)]


async def test_quota_is_granted_first_come_within_a_batch_and_the_rest_held(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test", quota=3)
    await egress.register_node(pool, NODE, [IP])
    batch = sorted([await store_message(pool, tenant, [f"u{i}@dest.test"]) for i in range(5)])

    replies = await intake.handle_batch(_ctx(pool, settings), [_received(tenant, m) for m in batch])

    assert await _statuses(pool, batch) == {
        **{m: "routed" for m in batch[:3]},
        **{m: "held" for m in batch[3:]},
    }
    held = [e for e in replies if e["type"] == "message.held"]
    assert {e["msgid"] for e in held} == {str(m) for m in batch[3:]}
    reasons = await pool.fetch("SELECT DISTINCT reason FROM messages WHERE id = ANY($1::uuid[])", batch[3:])
    assert [r["reason"] for r in reasons] == ["monthly quota used up"]
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 3
    kinds = await pool.fetch(
        "SELECT kind FROM notifications WHERE organization_id = $1 ORDER BY kind", tenant.org_id
    )
    # 1, 2, 3 of 3: 80 % is passed at 3 = 100 %, so exhausted only (as one at a time would say).
    assert [k["kind"] for k in kinds] == ["quota.exhausted"]


async def test_a_duplicate_batch_moves_and_counts_nothing(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "acme.test", quota=10)
    await egress.register_node(pool, NODE, [IP])
    batch = [await store_message(pool, tenant, [f"u{i}@dest.test"]) for i in range(3)]
    ctx = _ctx(pool, settings)
    events = [_received(tenant, m) for m in batch]
    decisions = [intake.decide_intake(m) for m in await pipeline.load_to_intake(pool, batch, 30)]
    first = await intake.handle_batch(ctx, [*events, *events])  # a duplicate inside the batch too
    assert len(first) == 3
    assert await intake.handle_batch(ctx, events) == []
    # Decided before the first batch moved them (a race): the statement's guard refuses them.
    assert await pipeline.apply_intake(pool, decisions) == []
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 3


async def test_concurrent_batches_of_one_organization_never_over_count(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test", quota=5)
    await egress.register_node(pool, NODE, [IP])
    ids = [await store_message(pool, tenant, [f"u{i}@dest.test"]) for i in range(8)]
    first = [intake.decide_intake(m) for m in await pipeline.load_to_intake(pool, ids[:4], 30)]
    second = [intake.decide_intake(m) for m in await pipeline.load_to_intake(pool, ids[4:], 30)]
    async with pool.acquire() as conn, conn.transaction():
        # The first batch holds its organization's row until it commits; the second one,
        # started meanwhile, must count from what the first one committed.
        assert len(await pipeline.apply_intake(conn, first)) == 4
        later = asyncio.create_task(pipeline.apply_intake(pool, second))
        await wait_until(lambda: _waiting_on_a_lock(pool), bound=10)
    moved = await later
    assert sorted(r.status for r in moved) == ["held"] * 3 + ["routed"]
    statuses = list((await _statuses(pool, ids)).values())
    assert sorted(statuses) == ["held"] * 3 + ["routed"] * 5
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 5


async def _waiting_on_a_lock(pool: Pool) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return bool(waiting)


async def test_without_a_live_egress_source_a_message_stays_admitted_for_the_sweep(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await store_message(pool, tenant, ["u@dest.test"])
    assert await intake.handle(_ctx(pool, settings), _received(tenant, message_id)) is None
    row = await one_row(pool, "SELECT status::text, outbound_ip FROM messages WHERE id = $1", message_id)
    assert (row["status"], row["outbound_ip"]) == ("admitted", None)


async def test_a_blocked_organizations_message_is_held_and_counts_nothing(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    other = await make_tenant(pool, settings, "other.test")
    await egress.register_node(pool, NODE, [IP])
    blocked = await store_message(pool, tenant, ["u@dest.test"])
    fine = await store_message(pool, other, ["u@dest.test"])
    await pool.execute("UPDATE organizations SET block_status = 'no_sending' WHERE id = $1", tenant.org_id)

    replies = await intake.handle_batch(
        _ctx(pool, settings), [_received(tenant, blocked), _received(other, fine)]
    )

    assert {(e["type"], e["msgid"]) for e in replies} == {
        ("message.held", str(blocked)),
        ("message.routed", str(fine)),
    }
    row = await one_row(
        pool, "SELECT status::text, reason, resume_status::text FROM messages WHERE id = $1", blocked
    )
    assert tuple(row) == ("held", pipeline.BLOCKED_REASON, "received")
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 0
