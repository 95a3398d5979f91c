"""The whole service in one process (the runtime of `remails up`) against real peers on
loopback: a DNS server, recording MX sinks on 127.0.0.x, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
import trustme

from remails.config import Settings, load_settings
from remails.db import Pool, create_pool
from remails.runtime import Runtime
from tests.factories import Tenant, make_tenant
from tests.smtp.conftest import tls_files
from tests.support.db import one_row
from tests.support.dnsserver import LocalDns
from tests.support.processes import kill_tree
from tests.support.sink import Sink, free_port, sink_server_tls
from tests.support.wait import wait_until

EGRESS_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
_LISTENERS = ("smtp_submission_listen", "smtp_tls_listen", "smtp_mx_listen", "http_listen")


@dataclass
class _Db:
    pool: Pool


@dataclass
class _Address:
    address: tuple[str, int]


@dataclass
class _Edge:
    submission_address: tuple[str, int]


@dataclass
class Spawned:
    """`remails up` in a subprocess, seen by the tests through the same attributes as a
    `Runtime` (`settings`, `db.pool`, `api.address`, `edge.submission_address`)."""

    process: asyncio.subprocess.Process
    settings: Settings
    db: _Db
    api: _Address
    edge: _Edge


@dataclass
class World:
    dns: LocalDns
    ca: trustme.CA
    base: dict[str, Any]
    sink_port: int
    tmp: Path
    sinks: list[Sink] = field(default_factory=list)
    runtimes: list[Runtime] = field(default_factory=list)
    spawned: list[Spawned] = field(default_factory=list)

    async def sink(self, domain: str, ip: str, *, preference: int = 10, tls: bool = True) -> Sink:
        """A recording MX for `domain` at `ip`, published in DNS."""
        host = f"mx-{ip.replace(':', 'x')}.test"
        sink = Sink(ip, self.sink_port, sink_server_tls(self.ca, host) if tls else None)
        await sink.start()
        self.sinks.append(sink)
        self.dns.zone.mx(domain, host, preference)
        self.dns.zone.a(host, ip)
        return sink

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(**{**self.base, **overrides})

    async def runtime(self, **overrides: Any) -> Runtime:
        runtime = Runtime(self.settings(**overrides))
        await runtime.start()
        self.runtimes.append(runtime)
        return runtime

    async def spawn(self, **overrides: Any) -> Spawned:
        """`remails up` in a subprocess on the world's database, ready when its API answers."""
        values = {**self.base, **overrides}
        ports = {key: free_port("127.0.0.1") for key in _LISTENERS}
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMAILS_")}
        for key, value in values.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            env[f"REMAILS_{key.upper()}"] = text
        for key, port in ports.items():
            env[f"REMAILS_{key.upper()}"] = f"127.0.0.1:{port}"
        log = (self.tmp / f"spawned-{len(self.spawned)}.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "remails.cli", "up", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
        )
        log.close()
        pool = await create_pool(str(values["database_url"]), min_size=1, max_size=4)
        spawned = Spawned(
            process,
            self.settings(**overrides),
            _Db(pool),
            _Address(("127.0.0.1", ports["http_listen"])),
            _Edge(("127.0.0.1", ports["smtp_submission_listen"])),
        )
        self.spawned.append(spawned)

        async def api_up() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"remails up exited with {process.returncode}")
            try:
                async with httpx.AsyncClient() as client:
                    url = f"http://127.0.0.1:{ports['http_listen']}/healthz"
                    return (await client.get(url, timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(api_up, bound=60, interval=0.1)
        return spawned

    async def crash(self, spawned: Spawned) -> None:
        """SIGKILL a `remails up` and its workers: nothing is finished, flushed or closed."""
        kill_tree(spawned.process.pid)
        assert await asyncio.wait_for(spawned.process.wait(), 10) == -signal.SIGKILL

    async def tenant(self, runtime: Runtime | Spawned, domain: str, *, quota: int | None = None) -> Tenant:
        assert runtime.db is not None
        tenant = await make_tenant(runtime.db.pool, runtime.settings, domain, quota=quota)
        key = await one_row(
            runtime.db.pool, "SELECT dkim_selector, dkim_public_key FROM domains WHERE name = $1", domain
        )
        self.dns.zone.txt(
            f"{key['dkim_selector']}._domainkey.{domain}", f"v=DKIM1; k=rsa; p={key['dkim_public_key']}"
        )
        return tenant

    async def submit(
        self,
        runtime: Runtime | Spawned | int,
        tenant: Tenant,
        rcpts: list[str],
        *,
        subject: str = "code",
        sender: str | None = None,
    ) -> str:
        """Submit over SMTP with STARTTLS and AUTH to a runtime (or a port on 127.0.0.1, for
        `remails up` in a subprocess); returns the queued message id."""
        if isinstance(runtime, int):
            host, port = "127.0.0.1", runtime
        else:
            assert runtime.edge is not None
            host, port = runtime.edge.submission_address
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname="app.test",
            tls_context=context,
            start_tls=True,
            timeout=10,
        )
        await client.connect()
        await client.login(tenant.username, tenant.password)
        sender = sender or f"app@{tenant.domain}"
        message = (
            f"From: App <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\n"
            "Your code is 123456.\r\n"
        ).encode()
        response = await client.sendmail(sender, rcpts, message)
        await client.quit()
        return response[1].rsplit(" ", 1)[1]


@pytest.fixture
async def world(dsn: str, local_dns: LocalDns, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[World]:
    cert, key = tls_files(ca, tmp_path)
    base = {
        "database_url": dsn,
        "data_dir": tmp_path / "data",
        "hostname": "mx.remails.test",
        "smtp_submission_listen": "127.0.0.1:0",
        "smtp_tls_listen": "127.0.0.1:0",
        "smtp_mx_listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "tls_cert": cert,
        "tls_key": key,
        "dns_servers": local_dns.servers,
        "outbound_ips": ",".join(EGRESS_IPS),
        "tick_seconds": 0.2,
        "retry_first_seconds": 0.2,
        "retry_max_seconds": 0.5,
        "stuck_after_seconds": 2,
        "heartbeat_seconds": 0.5,
        "smtp_client_timeout_seconds": 3,
    }
    world = World(local_dns, ca, base, free_port(), tmp_path)
    base["delivery_port"] = world.sink_port
    yield world
    for runtime in world.runtimes:
        await runtime.stop()
    for spawned in world.spawned:
        if spawned.process.returncode is None:
            spawned.process.terminate()
            try:
                await asyncio.wait_for(spawned.process.wait(), 30)
            except TimeoutError:
                spawned.process.kill()
                await spawned.process.wait()
        await spawned.db.pool.close()
    for sink in world.sinks:
        await sink.stop()


async def message_status(pool: Pool, message_id: str) -> str:
    return str(await pool.fetchval("SELECT status FROM messages WHERE id = $1::uuid", message_id))
