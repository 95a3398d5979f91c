"""Faults inside delivery cost only what they must: an exception in one destination is that
destination's recorded 4.3.0 and the others are delivered; each destination's outcome is stored
as soon as it is known, so a crash before the message is finished resends to nobody who has it;
a message stuck in `sending` past its lifetime ends `failed`; a re-added domain signs with its
new DKIM key at once."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace
from typing import Any

import dkim
import dns.resolver
import pytest

from remails.config import Settings
from remails.crypto import load_master_key
from remails.db import Pool, create_pool, domains, sweep
from remails.sending_domains import add_sending_domain
from tests.e2e.conftest import Spawned, World, message_status
from tests.factories import make_tenant, store_message
from tests.support.sink import Sink
from tests.support.wait import wait_until


def _dns_txt(world: World):  # type: ignore[no-untyped-def]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


async def test_an_exception_in_one_destination_is_recorded_and_the_others_delivered(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink_a = await world.sink("dest-a.test", "127.0.0.10")
    sink_b = await world.sink("dest-b.test", "127.0.0.11")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.sender is not None
    pool, sender = runtime.db.pool, runtime.sender
    real_attempt = sender._attempt

    async def faulty(domain: str, *args: Any) -> Any:
        if domain == "dest-b.test":
            raise RuntimeError("injected fault")
        return await real_attempt(domain, *args)

    monkeypatch.setattr(sender, "_attempt", faulty)
    message_id = await world.submit(runtime, tenant, ["a@dest-a.test", "b@dest-b.test"])

    async def deferred() -> bool:
        return await message_status(pool, message_id) == "deferred"

    await wait_until(deferred, bound=20)
    rows = {
        r["address"]: r
        for r in await pool.fetch(
            "SELECT address, status::text, last_enhanced, last_text FROM recipients"
            " WHERE message_id = $1::uuid",
            message_id,
        )
    }
    assert rows["a@dest-a.test"]["status"] == "delivered"
    assert rows["b@dest-b.test"]["status"] == "deferred"
    assert rows["b@dest-b.test"]["last_enhanced"] == "4.3.0"
    assert "RuntimeError: injected fault" in rows["b@dest-b.test"]["last_text"]
    assert len(sink_a.received) == 1 and not sink_b.received

    monkeypatch.setattr(sender, "_attempt", real_attempt)  # the fault goes away: b is retried

    async def delivered() -> bool:
        return await message_status(pool, message_id) == "delivered"

    await wait_until(delivered, bound=20)
    assert len(sink_b.received) == 1
    assert len(sink_a.received) == 1  # not sent again with the retry


async def test_a_crash_after_one_destination_resends_only_to_the_others(world: World) -> None:
    fast = await world.sink("fast.test", "127.0.0.10")
    slow = await world.sink("slow.test", "127.0.0.11")
    slow.handler.delay = 30.0  # `remails up` is killed while this MX is still thinking
    first = await world.spawn(node_name="node-1")
    pool = await create_pool(str(world.settings().database_url), max_size=2)  # with the codecs
    try:
        await _crash_mid_message(world, pool, first, fast, slow)
    finally:
        await pool.close()


async def _crash_mid_message(world: World, pool: Pool, first: Spawned, fast: Sink, slow: Sink) -> None:
    stand_in: Any = SimpleNamespace(db=SimpleNamespace(pool=pool), settings=first.settings)
    tenant = await world.tenant(stand_in, "example.test")
    message_id = await world.submit(
        first.edge.submission_address[1], tenant, ["one@fast.test", "two@slow.test"]
    )
    await asyncio.wait_for(slow.handler.data_started.wait(), 30)
    await wait_until(lambda: len(fast.received) == 1, bound=20)

    async def fast_recorded() -> bool:
        status = await pool.fetchval("SELECT status::text FROM recipients WHERE address = 'one@fast.test'")
        return bool(status == "delivered")

    await wait_until(fast_recorded)  # recorded while the message is still being sent
    assert await message_status(pool, message_id) == "sending"
    await world.crash(first)
    slow.handler.delay = 0.0

    await world.spawn(node_name="node-1")

    async def delivered() -> bool:
        return await message_status(pool, message_id) == "delivered"

    await wait_until(delivered, bound=60)
    assert len(fast.received) == 1  # exactly one copy
    assert len(slow.received) == 1


async def test_a_message_stuck_in_sending_past_its_lifetime_ends_failed(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "example.test")
    stuck = await store_message(pool, tenant, ["a@dest.test"])
    live = await store_message(pool, tenant, ["b@dest.test"])
    young = await store_message(pool, tenant, ["c@dest.test"])
    await pool.execute(
        "UPDATE messages SET status = 'sending', lease_owner = 'gone', attempts = 3,"
        " lease_until = now() - interval '1 second', expires_at = now() - interval '1 second'"
        " WHERE id = $1",
        stuck,
    )
    await pool.execute(  # past its lifetime too, but its sender still holds a live lease
        "UPDATE messages SET status = 'sending', lease_owner = 'busy',"
        " lease_until = now() + interval '1 hour', expires_at = now() - interval '1 second'"
        " WHERE id = $1",
        live,
    )
    await pool.execute(
        "UPDATE messages SET status = 'sending', lease_owner = 'gone',"
        " lease_until = now() - interval '1 second' WHERE id = $1",
        young,
    )
    expired = await sweep.expire_overdue(pool, 100)
    assert [s.id for s in expired] == [stuck]
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", stuck) == "failed"
    assert await pool.fetchval("SELECT status::text FROM recipients WHERE message_id = $1", stuck) == "failed"
    assert await pool.fetchval("SELECT lease_owner FROM messages WHERE id = $1", stuck) is None
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", live) == "sending"
    # Within its lifetime an expired lease is routed again, as before; past it, never.
    restarted = await sweep.restart_stuck(pool, 60, 100)
    assert [s.id for s in restarted] == [young]


async def test_a_re_added_domain_signs_with_its_new_key(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    await world.submit(runtime, tenant, ["one@dest.test"])
    await wait_until(lambda: len(sink.received) == 1)
    assert dkim.verify(sink.received[0].data, dnsfunc=_dns_txt(world))

    old = await domains.get_domain_by_name(pool, "example.test")
    assert old is not None
    assert await domains.delete_domain(pool, old.id)
    master_key = load_master_key(runtime.settings.secret_key, runtime.settings.data_dir)
    new = await add_sending_domain(pool, master_key, tenant.org_id, [tenant.project_id], "example.test")
    await domains.record_verification(pool, new.id, {"forced": True}, True)
    assert new.dkim_selector == old.dkim_selector and new.dkim_public_key != old.dkim_public_key
    name = f"{new.dkim_selector}._domainkey.example.test"
    world.dns.zone.remove(name, "TXT")
    world.dns.zone.txt(name, f"v=DKIM1; k=rsa; p={new.dkim_public_key}")

    await world.submit(runtime, tenant, ["two@dest.test"])
    await wait_until(lambda: len(sink.received) == 2)
    assert dkim.verify(sink.received[1].data, dnsfunc=_dns_txt(world))  # the new key signed it
    assert not dkim.verify(sink.received[0].data, dnsfunc=_dns_txt(world))  # the keys differ


async def test_new_connections_reuse_the_one_tls_context_of_the_policy(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink_a = await world.sink("dest-a.test", "127.0.0.10")
    sink_b = await world.sink("dest-b.test", "127.0.0.11")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)  # after the node has started
    for i in range(3):
        await world.submit(runtime, tenant, [f"a{i}@dest-a.test", f"b{i}@dest-b.test"])
    await wait_until(lambda: len(sink_a.received) == 3 and len(sink_b.received) == 3, bound=20)
    assert all(r.tls_version for r in sink_a.received + sink_b.received)  # STARTTLS was used
    # World.submit builds one client context per submission; delivery built none.
    assert len(built) == 3
