"""Receiving end to end: the whole runtime (`tests.e2e`'s world) with its inbound MX, a tenant
whose return-path subdomain is published in the loopback DNS, and helpers to talk to the MX."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiosmtplib
import httpx
import pytest

from remails.db import credentials
from remails.runtime import Runtime
from tests.e2e.conftest import EGRESS_IPS, World, world
from tests.factories import Tenant
from tests.support.receiver import Receiver

__all__ = ["REPORTS_DOMAIN", "Receiving", "receiver", "receiving", "start_receiving", "world"]

REPORTS_DOMAIN = "reports.remails.test"
SPF = "v=spf1 " + " ".join(f"ip4:{ip}" for ip in EGRESS_IPS)


@dataclass
class Receiving:
    world: World
    runtime: Runtime
    tenant: Tenant
    token: str  # an admin API key of the tenant's organization
    receiver: Receiver

    def api(self) -> httpx.AsyncClient:
        assert self.runtime.api is not None
        host, port = self.runtime.api.address
        return httpx.AsyncClient(
            base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {self.token}"}
        )

    async def domain_id(self, name: str | None = None) -> str:
        assert self.runtime.db is not None
        return str(
            await self.runtime.db.pool.fetchval(
                "SELECT id FROM domains WHERE name = $1", name or self.tenant.domain
            )
        )

    def publish_return_path(self, domain: str) -> None:
        zone = self.world.dns.zone
        zone.txt(domain, SPF + " ~all")
        zone.mx(f"rp.{domain}", self.runtime.settings.hostname, 10)
        zone.txt(f"rp.{domain}", SPF + " -all")

    async def verify(self, name: str | None = None) -> dict[str, Any]:
        async with self.api() as api:
            response = await api.post(f"/v1/domains/{await self.domain_id(name)}/verify")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def webhook(self, events: list[str]) -> str:
        async with self.api() as api:
            response = await api.post(
                f"/v1/projects/{self.tenant.project_id}/webhooks",
                json={"url": self.receiver.url, "events": events},
            )
        assert response.status_code == 201, response.text
        return str(response.json()["secret"])

    def mx(self) -> aiosmtplib.SMTP:
        assert self.runtime.edge is not None
        host, port = self.runtime.edge.mx_address
        context = ssl.create_default_context()
        self.world.ca.configure_trust(context)
        return aiosmtplib.SMTP(
            hostname=host,
            port=port,
            local_hostname="mx.receiver.test",
            tls_context=context,
            start_tls=False,
            timeout=10,
        )

    async def send_to_mx(self, rcpt: str, data: bytes, sender: str = "") -> tuple[int, str]:
        """One message to the inbound MX over STARTTLS; the reply to DATA, or the refusal."""
        client = self.mx()
        await client.connect()
        try:
            await client.starttls()
            await client.mail(sender)
            await client.rcpt(rcpt)
            response = await client.data(data)
            return response.code, response.message
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
        finally:
            if client.is_connected:
                await client.quit()


async def start_receiving(world: World, receiver: Receiver, **overrides: Any) -> Receiving:
    runtime = await world.runtime(
        webhooks_allow_private=True, reports_domain=REPORTS_DOMAIN, smtp_mx_listen="127.0.0.1:0", **overrides
    )
    assert runtime.db is not None
    tenant = await world.tenant(runtime, "example.test")
    _, token = await credentials.create_api_key(runtime.db.pool, tenant.org_id, "admin")
    return Receiving(world, runtime, tenant, token, receiver)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def receiving(world: World, receiver: Receiver) -> Receiving:
    return await start_receiving(world, receiver)
