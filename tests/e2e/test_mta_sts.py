"""MTA-STS (RFC 8461) end to end: the policy published in the loopback DNS and served over
HTTPS (trustme CA) by the test, the runtime delivering to recording MX sinks."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import trustme

from remails.db import Pool
from tests.e2e.conftest import World, message_status
from tests.support.sink import Sink, free_port, sink_server_tls
from tests.support.wait import wait_until

DEST = "dest.test"
POLICY_IP = "127.0.0.30"


@dataclass
class PolicyServer:
    """`https://mta-sts.<domain>/.well-known/mta-sts.txt` on loopback; records each request."""

    ca: trustme.CA
    body: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
        self.requests.append((request_line.split(" ")[1], headers.get("host", "")))
        body = self.body.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def start(self, port: int) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(f"mta-sts.{DEST}").configure_cert(context)
        self.server = await asyncio.start_server(self._serve, POLICY_IP, port, ssl=context)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _world_with_policy(world: World, mode: str, mx: str) -> tuple[PolicyServer, dict[str, object]]:
    port = free_port(POLICY_IP)
    server = PolicyServer(world.ca, f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
    await server.start(port)
    world.dns.zone.txt(f"_mta-sts.{DEST}", "v=STSv1; id=20261201")
    world.dns.zone.a(f"mta-sts.{DEST}", POLICY_IP)  # only our resolver knows this name
    ca_file = world.tmp / "ca.pem"
    world.ca.cert_pem.write_to_path(str(ca_file))
    return server, {"mta_sts_port": port, "tls_ca_file": ca_file}


async def _attempts(pool: Pool, message_id: str) -> list[dict[str, object]]:
    rows = await pool.fetch(
        "SELECT mx_host, code, enhanced, text, tls_version FROM attempts WHERE message_id = $1::uuid"
        " ORDER BY id",
        message_id,
    )
    return [dict(r) for r in rows]


async def _send(world: World, overrides: dict[str, object]) -> tuple[Pool, str]:
    runtime = await world.runtime(**overrides)
    assert runtime.db is not None
    tenant = await world.tenant(runtime, "example.test")
    return runtime.db.pool, await world.submit(runtime, tenant, [f"user@{DEST}"])


async def test_enforce_with_no_matching_mx_defers_with_4_7_5(world: World) -> None:
    sink = await world.sink(DEST, "127.0.0.31")
    server, overrides = await _world_with_policy(world, "enforce", "mx.elsewhere.test")
    try:
        pool, message_id = await _send(world, overrides)

        async def retried() -> bool:  # deferred (temporary), so tried again, never bounced
            return len(await _attempts(pool, message_id)) >= 2

        await wait_until(retried)
        for attempt in await _attempts(pool, message_id):
            assert attempt["enhanced"] == "4.7.5" and attempt["code"] is None
            assert "no MX host is named by the policy" in str(attempt["text"])
            assert "mta-sts enforce id=20261201" in str(attempt["tls_version"])
        assert await message_status(pool, message_id) != "delivered"
        assert sink.received == []  # never delivered to the MX the policy does not name
        assert server.requests == [
            ("/.well-known/mta-sts.txt", f"mta-sts.{DEST}:{overrides['mta_sts_port']}")
        ]
    finally:
        await server.stop()


async def test_enforce_with_a_matching_mx_delivers_over_verified_tls(world: World) -> None:
    sink = await world.sink(DEST, "127.0.0.32")
    server, overrides = await _world_with_policy(world, "enforce", "mx-127.0.0.32.test")
    try:
        pool, message_id = await _send(world, overrides)
        await wait_until(lambda: len(sink.received) == 1)

        async def delivered() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(delivered)
        assert sink.received[0].tls_version is not None
        attempt = (await _attempts(pool, message_id))[-1]
        assert attempt["code"] == 250
        assert str(attempt["tls_version"]).startswith("TLSv1")
        assert "mta-sts enforce id=20261201" in str(attempt["tls_version"])

        # The policy is cached by its id for max_age: the next message fetches nothing.
        tenant_runtime = world.runtimes[-1]
        tenant = await world.tenant(tenant_runtime, "second.test")
        await world.submit(tenant_runtime, tenant, [f"other@{DEST}"])
        await wait_until(lambda: len(sink.received) == 2)
        assert len(server.requests) == 1
    finally:
        await server.stop()


async def test_enforce_refuses_an_mx_whose_certificate_does_not_verify(world: World) -> None:
    """The MX is named by the policy but presents a certificate for another name: under
    opportunistic TLS it would get the message; under the policy it must not."""
    host = "mx-127.0.0.33.test"
    sink = Sink("127.0.0.33", world.sink_port, sink_server_tls(world.ca, "someone-else.test"))
    await sink.start()
    world.sinks.append(sink)
    world.dns.zone.mx(DEST, host, 10)
    world.dns.zone.a(host, "127.0.0.33")
    server, overrides = await _world_with_policy(world, "enforce", host)
    try:
        pool, message_id = await _send(world, overrides)

        async def attempted() -> bool:
            return bool(await _attempts(pool, message_id))

        await wait_until(attempted)
        attempt = (await _attempts(pool, message_id))[0]
        assert attempt["enhanced"] == "4.7.5" and attempt["code"] is None
        assert "TLS failed" in str(attempt["text"])
        assert sink.received == []
    finally:
        await server.stop()


async def test_testing_mode_delivers_and_records_what_would_have_failed(world: World) -> None:
    sink = await world.sink(DEST, "127.0.0.34")
    server, overrides = await _world_with_policy(world, "testing", "mx.elsewhere.test")
    try:
        pool, message_id = await _send(world, overrides)
        await wait_until(lambda: len(sink.received) == 1)

        async def delivered() -> bool:
            return await message_status(pool, message_id) == "delivered"

        await wait_until(delivered)
        attempt = (await _attempts(pool, message_id))[-1]
        assert attempt["code"] == 250 and attempt["mx_host"] == "mx-127.0.0.34.test"
        note = str(attempt["tls_version"])
        assert "mta-sts testing id=20261201: would have failed" in note
        assert "no MX host is named by the policy: mx-127.0.0.34.test" in note
    finally:
        await server.stop()
