"""`remails up` with REMAILS_SENDER_PROCESS=true: the front process accepts and routes, the
sender process (the node, under the node's own name) delivers; killing the sender process
loses nothing — it is started again and what it held is delivered."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable

from remails.db import Pool
from tests.e2e.conftest import World
from tests.support.processes import worker_pids
from tests.support.wait import wait_until

NODE = "mx.remails.test"


async def _delivered(pool: Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'"))


async def test_the_sender_process_delivers_what_the_front_accepted(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    up = await world.spawn(sender_process=True, outbound_ips="127.0.0.2")
    tenant = await world.tenant(up, "example.test")
    for i in range(8):
        await world.submit(up, tenant, [f"u{i}@dest.test"], subject=str(i))
    await wait_until(lambda: len(sink.received) == 8, bound=30)
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(f"u{i}@dest.test" for i in range(8))
    pool = up.db.pool
    await wait_until(lambda: _eq(_delivered(pool), 8), bound=10)
    nodes = {r["name"] for r in await pool.fetch("SELECT name FROM sender_nodes")}
    assert NODE in nodes and f"{NODE}-front" not in nodes  # the front runs no sender node
    assert await pool.fetchval("SELECT count(*) FROM attempts") == 8
    assert len(worker_pids(up.process.pid, "sender")) == 1
    assert len(worker_pids(up.process.pid, "front")) == 1
    up.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(up.process.wait(), 30) == 0


async def test_a_killed_sender_process_is_started_again_and_nothing_is_lost(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.delay = 0.3  # some are in flight when the sender process is killed
    up = await world.spawn(sender_process=True, outbound_ips="127.0.0.2")
    tenant = await world.tenant(up, "example.test")
    for i in range(6):
        await world.submit(up, tenant, [f"a{i}@dest.test"], subject=f"a{i}")
    (first,) = worker_pids(up.process.pid, "sender")
    os.kill(first, signal.SIGKILL)
    # Accepted while there is no sender process: routed (its node still looks live), and
    # claimed by the next one, which also takes back what the killed one held.
    for i in range(6):
        await world.submit(up, tenant, [f"b{i}@dest.test"], subject=f"b{i}")
    await wait_until(lambda: worker_pids(up.process.pid, "sender") not in ([], [first]), bound=30)
    sink.handler.delay = 0.0
    expected = {f"{p}{i}@dest.test" for p in "ab" for i in range(6)}
    await wait_until(lambda: {r.rcpt_tos[0] for r in sink.received} == expected, bound=60)
    await wait_until(lambda: _eq(_delivered(up.db.pool), 12), bound=30)


async def _eq(count: Awaitable[int], expected: int) -> bool:
    return await count == expected
