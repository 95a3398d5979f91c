"""Moderation end to end: a blocked organization's deferred message is not delivered; it is
held when due, and delivered once the block is lifted (the sweep resumes it)."""

from __future__ import annotations

from remails.db import orgs, pipeline
from tests.e2e.conftest import World, message_status
from tests.support.wait import wait_until


async def test_a_blocked_organizations_deferred_message_is_not_delivered_until_unblocked(
    world: World,
) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.data_replies.append("451 4.3.0 try later")
    runtime = await world.runtime(retry_first_seconds=1.5, retry_max_seconds=1.5)
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    message_id = await world.submit(runtime, tenant, ["user@dest.test"])

    async def status_is(status: str) -> bool:
        return await message_status(pool, message_id) == status

    await wait_until(lambda: status_is("deferred"), bound=20)
    await orgs.set_block_status(pool, tenant.org_id, "no_sending")
    await wait_until(lambda: status_is("held"), bound=20)  # due again: the sweep → route → held
    assert sink.received == []
    assert await pool.fetchval("SELECT attempts FROM messages WHERE id = $1::uuid", message_id) == 1
    assert await pool.fetchval("SELECT reason FROM messages WHERE id = $1::uuid", message_id) == (
        pipeline.BLOCKED_REASON
    )
    await orgs.set_block_status(pool, tenant.org_id, "not_blocked")  # the sweep resumes it
    await wait_until(lambda: status_is("delivered"), bound=20)
    assert len(sink.received) == 1
