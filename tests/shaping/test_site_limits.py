"""Per-site shaping end to end: the runtime delivering to recording MX sinks on loopback that
count simultaneous connections, with the site's limits from a shaping file."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from remails.db import Pool
from remails.runtime import Runtime
from tests.e2e.conftest import World, message_status
from tests.factories import Tenant
from tests.support.sink import sink_server_tls
from tests.support.wait import wait_until

SITE_DOMAINS = ["one.test", "two.test"]  # both on the same two MX hosts: one site
MX = {"mx1.shaped.test": "127.0.0.40", "mx2.shaped.test": "127.0.0.41"}


@dataclass
class Meter:
    """Connections open now and at most, over every sink address, by client IP."""

    open: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    arrivals: list[float] = field(default_factory=list)  # epoch of each stored message
    throttle_connections: set[int] = field(default_factory=set)  # these answer MAIL with 421
    throttled_at: list[float] = field(default_factory=list)
    data_delay: float = 0.0  # a slow MX: seconds before each reply to DATA


class _CountingSMTP(SMTP):
    def __init__(self, meter: Meter, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = meter
        self.peer_ip = ""
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.peer_ip:  # again after STARTTLS, on the TLS transport: the same connection
            super().connection_made(transport)
            return
        self.peer_ip = str(transport.get_extra_info("peername")[0])
        self.meter.connections += 1
        self.number = self.meter.connections
        self.meter.open[self.peer_ip] += 1
        self.meter.peak[self.peer_ip] = max(self.meter.peak[self.peer_ip], self.meter.open[self.peer_ip])
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.meter.open[self.peer_ip] -= 1
        super().connection_lost(error)


class _Handler:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if isinstance(server, _CountingSMTP) and server.number in self.meter.throttle_connections:
            self.meter.throttled_at.append(time.time())
            return "421 4.7.0 Try again later, closing connection"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.meter.data_delay:
            await asyncio.sleep(self.meter.data_delay)  # the MX's own pace, not a synchronisation
        self.meter.arrivals.append(time.time())
        return "250 2.0.0 Ok: stored"


async def _sites(world: World, meter: Meter) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for host, ip in MX.items():
        tls: ssl.SSLContext = sink_server_tls(world.ca, host)

        def factory(host: str = host, tls: ssl.SSLContext = tls) -> SMTP:
            return _CountingSMTP(meter, _Handler(meter), hostname=host, tls_context=tls, decode_data=False)

        servers.append(await loop.create_server(factory, ip, world.sink_port))
        world.dns.zone.a(host, ip)
        for domain in SITE_DOMAINS:
            world.dns.zone.mx(domain, host, 10)
    return servers


def _shaping_file(tmp: Path, body: str) -> Path:
    path = tmp / "shaping.toml"
    path.write_text(body)
    return path


async def _submit_many(runtime: Runtime, world: World, tenant: Tenant, count: int) -> None:
    """`count` messages over one submission session, each to one recipient of each domain."""
    assert runtime.edge is not None
    host, port = runtime.edge.submission_address
    context = ssl.create_default_context()
    world.ca.configure_trust(context)
    client = aiosmtplib.SMTP(hostname=host, port=port, tls_context=context, start_tls=True, timeout=10)
    await client.connect()
    await client.login(tenant.username, tenant.password)
    sender = f"app@{tenant.domain}"
    for i in range(count):
        rcpts = [f"user{i}@{d}" for d in SITE_DOMAINS]
        message = f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: n{i}\r\n\r\nbody {i}\r\n"
        await client.sendmail(sender, rcpts, message.encode())
    await client.quit()


async def _delivered(pool: Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM recipients WHERE status = 'delivered'"))


async def _stop(servers: list[asyncio.Server]) -> None:
    for server in servers:
        server.close()
        await server.wait_closed()


LIMITED = '[sites.shaped]\nmx = ["*.shaped.test"]\nmax_connections = 2\nmax_messages_per_connection = 15\n'


async def test_max_connections_holds_for_a_site_of_two_mx_hosts_and_two_domains(world: World) -> None:
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(
            outbound_ips="127.0.0.2", shaping_file=_shaping_file(world.tmp, LIMITED), shaping_idle_seconds=30
        )
        assert runtime.db is not None
        tenant = await world.tenant(runtime, "example.test")
        await _submit_many(runtime, world, tenant, 100)  # 200 deliveries, two domains, one site

        async def all_delivered() -> bool:
            return await _delivered(runtime.db.pool) == 200  # type: ignore[union-attr]

        await wait_until(all_delivered, bound=120, interval=0.2)
        assert len(meter.arrivals) == 200
        assert meter.peak["127.0.0.2"] == 2  # the limit was reached, never passed
        # 15 messages per connection, then QUIT and a new one: at least 200 / 15 connections.
        assert meter.connections >= math.ceil(200 / 15)
        sites = await runtime.db.pool.fetch("SELECT DISTINCT site FROM attempts")
        assert [r["site"] for r in sites] == ["mx1.shaped.test,mx2.shaped.test"]
        waited = await runtime.db.pool.fetch("SELECT waited FROM attempts WHERE waited IS NOT NULL")
        assert waited and all(str(r["waited"]).startswith("shaping: ") for r in waited)
        assert any("for a connection" in str(r["waited"]) for r in waited)
        assert await runtime.db.pool.fetchval("SELECT count(*) FROM attempts WHERE code <> 250") == 0
    finally:
        await _stop(servers)


async def test_two_sender_nodes_sharing_an_ip_together_stay_under_max_connections(world: World) -> None:
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        shaping = _shaping_file(world.tmp, LIMITED)
        runtimes = [
            await world.runtime(
                outbound_ips="127.0.0.2", node_name=name, shaping_file=shaping, shaping_idle_seconds=30
            )
            for name in ("node-a", "node-b")
        ]
        tenants = [await world.tenant(r, f"tenant{i}.test") for i, r in enumerate(runtimes)]
        await asyncio.gather(*(_submit_many(r, world, t, 50) for r, t in zip(runtimes, tenants, strict=True)))
        pool = runtimes[0].db.pool  # type: ignore[union-attr]

        async def all_delivered() -> bool:
            return await _delivered(pool) == 200

        await wait_until(all_delivered, bound=120, interval=0.2)
        assert meter.peak["127.0.0.2"] <= 2
        # Each node delivered its own tenant's mail (each runtime has its own bus): both sent.
        per_tenant = await pool.fetch(
            "SELECT m.organization_id, count(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.status = 'delivered' GROUP BY 1"
        )
        assert sorted(r["n"] for r in per_tenant) == [100, 100]
    finally:
        await _stop(servers)


THROTTLED = (
    '[sites.shaped]\nmx = ["*.shaped.test"]\nmax_connections = 1\nmax_messages_per_connection = 8\n'
    "max_deliveries_per_minute = 600\n"  # 10 per one-second window
    "[throttle]\nsuspend_seconds = 1.5\nrate_factor = 0.5\nrestore_step = 0.1\n"
)


def _per_window(arrivals: list[float], start: float, end: float) -> list[int]:
    counts = Counter(math.floor(t) for t in arrivals if start <= t < end)
    return [counts.get(w, 0) for w in range(math.floor(start), math.floor(end))]


async def test_a_421_suspends_the_site_lowers_its_rate_and_the_rate_recovers(world: World) -> None:
    meter = Meter(throttle_connections={3})
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(
            outbound_ips="127.0.0.2",
            shaping_file=_shaping_file(world.tmp, THROTTLED),
            shaping_window_seconds=1,
            shaping_idle_seconds=30,
        )
        assert runtime.db is not None
        pool = runtime.db.pool
        tenant = await world.tenant(runtime, "example.test")
        await _submit_many(runtime, world, tenant, 60)  # 120 deliveries at 10 a second at most

        async def all_delivered() -> bool:
            return await _delivered(pool) == 120

        await wait_until(all_delivered, bound=120, interval=0.2)
        assert len(meter.throttled_at) == 1
        hit = meter.throttled_at[0]
        state = await pool.fetchrow(
            "SELECT throttled, last_throttle, extract(epoch FROM suspended_until)::float8 AS until,"
            " rate_factor FROM shaping_sites WHERE site = 'mx1.shaped.test,mx2.shaped.test'"
        )
        assert state is not None
        assert state is not None
        assert state["throttled"] == 1 and "421 4.7.0" in state["last_throttle"]
        until = float(state["until"])
        assert 1.4 < until - hit < 2.5
        # Suspended: nothing went to the site until the suspension ended.
        assert not [t for t in meter.arrivals if hit < t < until - 0.05]
        # Dropped: the rate right after the suspension was at most half (+1 for window edges)…
        after = _per_window(meter.arrivals, math.ceil(until), math.ceil(until) + 2)
        assert max(after) <= 6 + 1, after
        # …and recovered: later windows saw the whole rate again.
        before = _per_window(meter.arrivals, meter.arrivals[0], hit)
        later = _per_window(meter.arrivals, math.ceil(until) + 5, meter.arrivals[-1])
        assert max(before, default=0) >= 8 and max(later, default=0) >= 8, (before, after, later)
        # The attempt log says so: the 421's attempt and the ones that waited for the suspension.
        throttled = await pool.fetchval("SELECT text FROM attempts WHERE code = 421")
        assert "suspended until" in throttled
        waits = [
            str(r["waited"]) for r in await pool.fetch("SELECT waited FROM attempts WHERE waited IS NOT NULL")
        ]
        assert any("for suspended until" in w for w in waits)
        assert any("for the rate limit" in w for w in waits)
    finally:
        await _stop(servers)


async def _suspend_site(pool: Pool, seconds: float) -> None:
    """The site suspended from 127.0.0.2, as another process would have recorded it."""
    await pool.execute(
        "INSERT INTO shaping_sites (source_ip, site, suspended_until)"
        " VALUES ('127.0.0.2', $1, now() + make_interval(secs => $2))",
        SITE,
        seconds,
    )


SITE = "mx1.shaped.test,mx2.shaped.test"


async def test_a_destination_waits_out_a_suspension_with_its_lease_renewed(world: World) -> None:
    """The wait (6 s) is longer than the message's lease (4 s: stuck after 2 s, 0.5 s SMTP
    steps): without renewing it, the sweep would take the message back and send it again."""
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(outbound_ips="127.0.0.2", smtp_client_timeout_seconds=0.5)
        assert runtime.db is not None and runtime.sender is not None
        assert runtime.sender.lease_seconds == 4
        pool = runtime.db.pool
        await _suspend_site(pool, 6)
        tenant = await world.tenant(runtime, "example.test")
        message_id = await world.submit(runtime, tenant, ["user@one.test"])

        async def delivered() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(delivered, bound=30)
        row = await pool.fetchrow(
            "SELECT attempts, status::text FROM messages WHERE id = $1::uuid", message_id
        )
        assert row is not None and row["status"] == "delivered"
        assert row["attempts"] == 1  # claimed once: the sweep never took it back
        assert len(meter.arrivals) == 1
        attempt = await pool.fetchrow(
            "SELECT site, waited, code FROM attempts WHERE message_id = $1::uuid", message_id
        )
        assert attempt is not None and attempt["code"] == 250 and attempt["site"] == SITE
        assert str(attempt["waited"]).startswith("shaping: ") and "for suspended until" in str(
            attempt["waited"]
        )
        assert float(str(attempt["waited"]).split()[1]) >= 5.0
    finally:
        await _stop(servers)


async def test_past_the_longest_wait_a_destination_is_deferred_4_4_5_naming_the_site(world: World) -> None:
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(outbound_ips="127.0.0.2", shaping_max_wait_seconds=0.5)
        assert runtime.db is not None
        pool = runtime.db.pool
        await _suspend_site(pool, 5)  # long enough for a loaded machine
        tenant = await world.tenant(runtime, "example.test")
        message_id = await world.submit(runtime, tenant, ["user@one.test"])

        async def delivered() -> bool:
            return await _delivered(pool) == 1

        await wait_until(delivered, bound=30)  # retried on the normal schedule once it lifted
        attempts = await pool.fetch(
            "SELECT code, enhanced, text FROM attempts WHERE message_id = $1::uuid ORDER BY id", message_id
        )
        refused = [a for a in attempts if a["enhanced"] == "4.4.5"]
        assert refused and all(a["code"] is None for a in refused)
        assert f"in the ready queue for site {SITE} from 127.0.0.2 for suspended until" in refused[0]["text"]
        assert attempts[-1]["code"] == 250
        assert len(meter.arrivals) == 1
    finally:
        await _stop(servers)


async def test_a_full_ready_queue_defers_the_next_destination_4_4_5(world: World) -> None:
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(outbound_ips="127.0.0.2", shaping_queue_max=1)
        assert runtime.db is not None
        pool = runtime.db.pool
        await _suspend_site(pool, 5)  # long enough for a loaded machine
        tenant = await world.tenant(runtime, "example.test")
        message_id = await world.submit(runtime, tenant, ["a@one.test", "b@two.test"])  # one site

        async def delivered() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(delivered, bound=30)
        attempts = await pool.fetch(
            "SELECT domain, enhanced, text FROM attempts WHERE message_id = $1::uuid ORDER BY id", message_id
        )
        full = [a for a in attempts if a["enhanced"] == "4.4.5"]
        assert len(full) == 1
        full_text = f"the ready queue for site {SITE} from 127.0.0.2 is full (1 of this organization's"
        assert full_text in full[0]["text"]
        assert len(meter.arrivals) == 2
    finally:
        await _stop(servers)


async def test_a_421_greeting_is_recorded_as_the_servers_reply_and_suspends_the_site(world: World) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.7.0 mx.greet.test Try again later, closing connection\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(busy, "127.0.0.42", world.sink_port)
    world.dns.zone.mx("greet.test", "mx.greet.test", 10)
    world.dns.zone.a("mx.greet.test", "127.0.0.42")
    try:
        runtime = await world.runtime(outbound_ips="127.0.0.2")
        assert runtime.db is not None
        pool = runtime.db.pool
        tenant = await world.tenant(runtime, "example.test")
        message_id = await world.submit(runtime, tenant, ["user@greet.test"])

        async def attempted() -> bool:
            return bool(
                await pool.fetchval("SELECT count(*) FROM attempts WHERE message_id = $1::uuid", message_id)
            )

        await wait_until(attempted, bound=20)
        attempt = await pool.fetchrow(
            "SELECT mx_host, code, enhanced, text FROM attempts WHERE message_id = $1::uuid"
            " ORDER BY id LIMIT 1",
            message_id,
        )
        assert attempt is not None
        assert (attempt["mx_host"], attempt["code"], attempt["enhanced"]) == ("mx.greet.test", 421, "4.7.0")
        assert "suspended until" in attempt["text"]
        throttled = await pool.fetchval("SELECT throttled FROM shaping_sites WHERE site = 'mx.greet.test'")
        assert throttled == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_idle_connections_of_one_node_give_way_to_another_node_waiting(world: World) -> None:
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        shaping = _shaping_file(world.tmp, LIMITED)
        first, second = [
            await world.runtime(
                outbound_ips="127.0.0.2", node_name=name, shaping_file=shaping, shaping_idle_seconds=120
            )
            for name in ("node-a", "node-b")
        ]
        pool = first.db.pool  # type: ignore[union-attr]
        await _submit_many(first, world, await world.tenant(first, "tenant0.test"), 10)

        async def first_done() -> bool:
            return await _delivered(pool) == 20 and meter.open["127.0.0.2"] == 2

        await wait_until(first_done, bound=30)  # node-a now holds both slots, idle for 120 s
        message_id = await world.submit(second, await world.tenant(second, "tenant1.test"), ["x@one.test"])

        async def second_done() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(second_done, bound=20)  # long before node-a's connections would idle out
        assert meter.peak["127.0.0.2"] == 2
        waited = await pool.fetchval("SELECT waited FROM attempts WHERE message_id = $1::uuid", message_id)
        assert "for a connection (all held by other processes)" in str(waited)
    finally:
        await _stop(servers)


BUSY = '[sites.shaped]\nmx = ["*.shaped.test"]\nmax_connections = 2\nmax_messages_per_connection = 1000\n'


async def test_a_node_busy_with_a_site_gives_a_slot_to_another_node_waiting(world: World) -> None:
    """node-a took both slots and keeps them busy (a long line of its own, connections never
    used up); node-b's one message still goes long before node-a's line is done: node-a gives a
    slot back while node-b, holding none, waits for one."""
    meter = Meter(data_delay=0.05)
    servers = await _sites(world, meter)
    try:
        shaping = _shaping_file(world.tmp, BUSY)
        first, second = [
            await world.runtime(
                outbound_ips="127.0.0.2", node_name=name, shaping_file=shaping, shaping_idle_seconds=120
            )
            for name in ("node-a", "node-b")
        ]
        pool = first.db.pool  # type: ignore[union-attr]
        await _submit_many(first, world, await world.tenant(first, "tenant0.test"), 150)  # 300 recipients

        async def first_busy() -> bool:
            return meter.open["127.0.0.2"] == 2 and 0 < await _delivered(pool) < 100

        await wait_until(first_busy, bound=30)
        message_id = await world.submit(second, await world.tenant(second, "tenant1.test"), ["x@one.test"])

        async def second_done() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(second_done, bound=30)
        assert await _delivered(pool) <= 250  # node-a's line was far from done
        assert meter.peak["127.0.0.2"] == 2
        waited = await pool.fetchval("SELECT waited FROM attempts WHERE message_id = $1::uuid", message_id)
        assert "for a connection (all held by other processes)" in str(waited)
    finally:
        await _stop(servers)


ONE_CONNECTION = '[sites.shaped]\nmx = ["*.shaped.test"]\nmax_connections = 1\n'


async def test_tenants_take_turns_in_a_sites_ready_queue(world: World) -> None:
    """One organization's burst to a site waits in line; another organization's message that
    joins the line after it is served next, not after the whole burst."""
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(
            outbound_ips="127.0.0.2", shaping_file=_shaping_file(world.tmp, ONE_CONNECTION)
        )
        assert runtime.db is not None
        pool = runtime.db.pool
        await _suspend_site(pool, 6)  # everything queues until then
        bulk = await world.tenant(runtime, "bulk.test")
        await _submit_many(runtime, world, bulk, 10)  # 20 destinations of one organization

        async def bulk_waiting() -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM messages WHERE organization_id = $1 AND status = 'sending'",
                bulk.org_id,
            )
            return int(count) == 10

        await wait_until(bulk_waiting, bound=30)
        other = await world.tenant(runtime, "reset.test")
        reset_id = await world.submit(runtime, other, ["reset@one.test"])

        async def all_delivered() -> bool:
            return await _delivered(pool) == 21

        await wait_until(all_delivered, bound=60, interval=0.2)
        order = await pool.fetch("SELECT message_id FROM recipients ORDER BY delivered_at, id")
        rank = [str(r["message_id"]) for r in order].index(str(reset_id))
        assert rank <= 2, f"the other organization's message was delivered {rank + 1}th of 21"
    finally:
        await _stop(servers)


async def test_one_organization_holds_at_most_its_share_of_a_sender_node(world: World) -> None:
    """With the site suspended every claimed message waits; one organization's burst takes its
    share of the node and no more, so another organization's message is still taken; the rest of
    the burst goes as its own finish (the sweep, which would route them again, is ten minutes
    away here)."""
    meter = Meter()
    servers = await _sites(world, meter)
    try:
        runtime = await world.runtime(
            outbound_ips="127.0.0.2",
            sender_max_in_flight=3,
            sender_max_in_flight_per_organization=2,
            stuck_after_seconds=600,
        )
        assert runtime.db is not None
        pool = runtime.db.pool
        await _suspend_site(pool, 8)
        bulk = await world.tenant(runtime, "bulk.test")
        for i in range(4):
            await world.submit(runtime, bulk, [f"user{i}@one.test"])

        async def sending(org_id: object) -> int:
            return int(
                await pool.fetchval(
                    "SELECT count(*) FROM messages WHERE organization_id = $1 AND status = 'sending'",
                    org_id,
                )
            )

        async def bulk_holds_its_share() -> bool:
            return await sending(bulk.org_id) == 2

        await wait_until(bulk_holds_its_share, bound=30)
        other = await world.tenant(runtime, "reset.test")
        await world.submit(runtime, other, ["reset@one.test"])

        async def other_taken() -> bool:
            return await sending(other.org_id) == 1

        await wait_until(other_taken, bound=5)  # long before the suspension ends
        assert await sending(bulk.org_id) == 2

        async def all_delivered() -> bool:
            return await _delivered(pool) == 5

        await wait_until(all_delivered, bound=60, interval=0.2)
    finally:
        await _stop(servers)
