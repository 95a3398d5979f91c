"""The sender's batched claim and its own decision: a batch never waits for sending slots
while it holds some (a node whose slots all sit with waiting batches would send nothing again),
the deciding statement never overwrites a recipient that settled while its message was being
sent, and it gives the reason the retry function gives. Real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from remails.attempt_decision import apply_decisions
from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, inbound, pipeline
from remails.db.pipeline import SenderFinish
from remails.events import DeliveryAttempted, EventType, MessageRouted, make_event
from remails.outcomes import RetryPolicy
from remails_functions import retry
from remails_sender_node.agent import SenderNode
from tests.factories import Tenant, make_tenant, store_message
from tests.support.recording import RecordingPublisher
from tests.support.wait import wait_until

NODE, IP = "node-a", "127.0.0.2"
POLICY = RetryPolicy(60, 3600)


async def test_a_batch_larger_than_the_free_slots_is_still_sent(
    pool: Pool, settings: Settings, tmp_path: Path
) -> None:
    """One sending slot, a batch of two routed messages (sandbox: recorded, sent to no MX): the
    first is claimed and finished, its slot freed, then the second — the batch never waits for a
    slot while it holds one, or it waits for ever (nothing else gives a slot back)."""
    tenant = await make_tenant(pool, settings, "acme.test")
    await pool.execute("UPDATE projects SET sandbox = true WHERE id = $1", tenant.project_id)
    ids = []
    for i in range(2):
        message_id = await store_message(pool, tenant, [f"u{i}@dest.test"])
        await pool.execute(
            "UPDATE messages SET status = 'routed', outbound_ip = $2::inet WHERE id = $1", message_id, IP
        )
        ids.append(message_id)
    one_slot = load_settings(
        **{
            **settings.model_dump(exclude_unset=True),
            "outbound_ips": IP,
            "node_name": NODE,
            "sender_max_in_flight": 1,
        }
    )
    ctx = Context(
        one_slot, pool, RecordingPublisher(), load_master_key(one_slot.secret_key, one_slot.data_dir)
    )
    node = SenderNode(ctx, decides=True)
    events = [
        make_event(
            EventType.MESSAGE_ROUTED,
            MessageRouted(
                message_id=m, organization_id=tenant.org_id, project_id=tenant.project_id, outbound_ip=IP
            ),
        )
        for m in ids
    ]
    try:
        await asyncio.wait_for(node.handle_routed_batch(events), timeout=10)

        async def both_delivered() -> bool:
            rows = await pool.fetch("SELECT status::text FROM messages WHERE id = ANY($1::uuid[])", ids)
            return [r["status"] for r in rows] == ["delivered", "delivered"]

        await wait_until(both_delivered, bound=10)
        await wait_until(lambda: not node._sending, bound=10)
        assert not node._in_flight.locked() and not node._in_flight_by_organization  # nothing leaked
    finally:
        await node.stop()


async def test_a_recipient_settled_while_its_message_was_sending_keeps_its_status(
    pool: Pool, settings: Settings
) -> None:
    """A complaint (or asynchronous bounce) that settles a recipient during the SMTP transaction:
    the sender's decision, made from what the claim handed out, must not set it back."""
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await store_message(pool, tenant, ["a@dest.test"])
    await pool.execute(
        "UPDATE messages SET status = 'routed', outbound_ip = $2::inet WHERE id = $1", message_id, IP
    )
    claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert claimed is not None
    rid = claimed.recipient_ids["a@dest.test"]
    # Meanwhile (the transaction is in progress) the recipient complains through the loop.
    await inbound.apply_complaint(pool, message_id, rid, "complaint via feedback loop")
    assert await pool.fetchval("SELECT status::text FROM recipients WHERE id = $1", rid) == "complained"

    attempt = pipeline.AttemptRecord(
        "dest.test",
        ["a@dest.test"],
        "mx.dest.test",
        IP,
        None,
        451,
        None,
        "4.7.1 try later",
        5,
        {"a@dest.test": (451, None, "4.7.1 try later")},
    )
    rows = [pipeline.RecipientRow(rid, "a@dest.test", "dest.test", "pending", 451, None, "4.7.1 try later")]
    attempted = pipeline.Attempted(
        claimed.key, "sending", claimed.attempts, claimed.expires_at, rows, claimed.created_at
    )
    await apply_decisions(pool, [attempted], POLICY, [SenderFinish(claimed.lease, attempt=attempt)])

    assert await pool.fetchval("SELECT status::text FROM recipients WHERE id = $1", rid) == "complained"


async def _claimed(pool: Pool, tenant: Tenant, recipients: list[str]) -> pipeline.Claimed:
    message_id = await store_message(pool, tenant, recipients)
    await pool.execute(
        "UPDATE messages SET status = 'routed', outbound_ip = $2::inet WHERE id = $1", message_id, IP
    )
    claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert claimed is not None
    return claimed


async def test_the_sender_decides_with_the_same_reason_as_the_retry_function(
    pool: Pool, settings: Settings
) -> None:
    """The same replies give the same message reason (stored, and in the webhook payload)
    whether the sender decides its one transaction itself (all in one process) or records it
    and the retry function decides (Knative): one recipient delivered, one deferred."""
    tenant = await make_tenant(pool, settings, "acme.test")
    replies: dict[str, tuple[int | None, str | None, str]] = {
        "a@dest.test": (250, None, "2.0.0 ok"),
        "b@dest.test": (451, None, "4.7.1 later"),
    }
    attempt = pipeline.AttemptRecord(
        "dest.test", list(replies), "mx.dest.test", IP, None, 250, None, "2.0.0 ok", 5, replies
    )
    ctx = Context(
        load_settings(**{**settings.model_dump(exclude_unset=True), "outbound_ips": IP, "node_name": NODE}),
        pool,
        RecordingPublisher(),
        load_master_key(settings.secret_key, settings.data_dir),
    )

    # The retry function's way: recorded, finished, then decided from the stored rows.
    old = await _claimed(pool, tenant, list(replies))
    assert await pipeline.record_destination(pool, old.key.id, old.lease, attempt, ["a@dest.test"])
    assert await pipeline.finish_sending(pool, old.key.id, old.lease)
    event = make_event(
        EventType.DELIVERY_ATTEMPTED,
        DeliveryAttempted(message_id=old.key.id, organization_id=tenant.org_id, project_id=tenant.project_id),
    )
    assert len(await retry.handle_attempted_batch(ctx, [event])) == 1

    # The sender's own way: one statement stores the attempt and decides.
    new = await _claimed(pool, tenant, list(replies))
    node = SenderNode(ctx, decides=True)
    try:
        await node._decide(new, [attempt], None, unrecorded=attempt)
    finally:
        await node.stop()

    reasons = await pool.fetch(
        "SELECT id, status::text, reason FROM messages WHERE id = ANY($1::uuid[])", [old.key.id, new.key.id]
    )
    by_id = {r["id"]: (r["status"], r["reason"]) for r in reasons}
    assert by_id[old.key.id] == ("deferred", "1 deferred")  # the retry function's decision
    assert by_id[new.key.id] == by_id[old.key.id]
