"""The SMTP edge on 127.0.0.1 (port 0), with a tenant and TLS from a throw-away CA."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme

from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool
from remails_smtp_edge.server import EdgeServer
from tests.factories import Tenant, make_tenant
from tests.support.recording import RecordingPublisher

HOSTNAME = "mx.remails.test"


@dataclass
class Edge:
    server: EdgeServer
    settings: Settings
    pool: Pool
    tenant: Tenant
    publisher: RecordingPublisher
    client_tls: ssl.SSLContext
    ca_path: Path

    @property
    def submission(self) -> tuple[str, int]:
        return self.server.submission_address

    @property
    def implicit(self) -> tuple[str, int]:
        return self.server.tls_address

    def client(self, implicit: bool = False, **kwargs: Any) -> aiosmtplib.SMTP:
        host, port = self.implicit if implicit else self.submission
        return aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname="client.test",
            tls_context=self.client_tls,
            use_tls=implicit,
            start_tls=False,
            timeout=10,
            **kwargs,
        )

    async def stored_count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM messages"))


EdgeFactory = Callable[..., Awaitable[Edge]]


def proxy_v2(src: str, dst: str = "127.0.0.1") -> bytes:
    """A PROXY protocol v2 header (TCP over IPv4) naming `src` as the client."""
    addresses = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    payload = addresses + (40000).to_bytes(2, "big") + (25).to_bytes(2, "big")
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + len(payload).to_bytes(2, "big") + payload


def tls_files(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert_path, key_path = folder / "edge-cert.pem", folder / "edge-key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
async def edge_factory(
    pool: Pool, settings: Settings, ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[EdgeFactory]:
    servers: list[EdgeServer] = []
    cert, key = tls_files(ca, tmp_path)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    tenant = await make_tenant(pool, settings)

    async def start(trusted_cidr: str | None = None, **overrides: Any) -> Edge:
        """The edge with settings overridden; `trusted_cidr` trusts that network for the tenant."""
        if trusted_cidr is not None:
            overrides["trusted_networks"] = f"{trusted_cidr}={tenant.project_id}"
        values = {
            **settings.model_dump(),
            "hostname": HOSTNAME,
            "smtp_submission_listen": "127.0.0.1:0",
            "smtp_tls_listen": "127.0.0.1:0",
            "smtp_mx_listen": "127.0.0.1:0",
            "tls_cert": cert,
            "tls_key": key,
            **overrides,
        }
        edge_settings = load_settings(**values)
        publisher = RecordingPublisher()
        ctx = Context(edge_settings, pool, publisher, load_master_key(None, edge_settings.data_dir))
        server = EdgeServer(ctx)
        await server.start()
        servers.append(server)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        return Edge(server, edge_settings, pool, tenant, publisher, client_tls, ca_path)

    yield start
    for server in servers:
        await server.stop(grace=1)


@pytest.fixture
async def edge(edge_factory: EdgeFactory) -> Edge:
    return await edge_factory()
