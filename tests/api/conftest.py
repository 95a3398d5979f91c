"""The management API over httpx, on a real PostgreSQL, with tenants in two organizations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, credentials
from remails_functions.api import create_app
from tests.factories import Tenant, make_tenant
from tests.support.recording import RecordingPublisher


@dataclass
class Api:
    client: httpx.AsyncClient
    pool: Pool
    settings: Settings
    publisher: RecordingPublisher
    admin_token: str
    acme: Tenant
    other: Tenant
    acme_admin: str
    acme_maintainer: str
    acme_reader: str
    other_admin: str

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, url: str, token: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(
            method, url, headers={**self.auth(token), **kwargs.pop("headers", {})}, **kwargs
        )


async def make_api(pool: Pool, settings: Settings, **overrides: Any) -> tuple[Api, Any]:
    settings = load_settings(**{**settings.model_dump(), "hostname": "mx.remails.test", **overrides})
    publisher = RecordingPublisher()
    ctx = Context(settings, pool, publisher, load_master_key(None, settings.data_dir))
    app = create_app(ctx)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")
    acme = await make_tenant(pool, settings, "acme.test")
    other = await make_tenant(pool, settings, "other.test")
    tokens = {}
    for name, org, role in [
        ("acme_admin", acme.org_id, "admin"),
        ("acme_maintainer", acme.org_id, "maintainer"),
        ("acme_reader", acme.org_id, "read_only"),
        ("other_admin", other.org_id, "admin"),
    ]:
        tokens[name] = (await credentials.create_api_key(pool, org, role))[1]
    _, admin = await credentials.create_api_key(pool, None, "admin")
    return Api(client, pool, settings, publisher, admin, acme, other, **tokens), client


@pytest.fixture
async def api(pool: Pool, settings: Settings) -> AsyncIterator[Api]:
    made, client = await make_api(pool, settings)
    yield made
    await client.aclose()


def text_message(tenant: Tenant, **extra: Any) -> dict[str, Any]:
    return {
        "from": f"app@{tenant.domain}",
        "to": ["user@dest.test"],
        "subject": "Your code",
        "text": "Your code is 123456.",
        **extra,
    }
