"""Sandbox projects end to end: a message submitted by SMTP is validated, counted, routed and
DKIM-signed like any other, then recorded delivered with a note and sent to no MX; the
webhooks fire and the signed bytes are served by the API to its own tenant only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dkim
import dns.resolver
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from remails.crypto import load_master_key
from remails.db import credentials, domains, orgs
from remails.runtime import Runtime
from remails.sending_domains import add_sending_domain
from tests.e2e.conftest import World, message_status
from tests.factories import Tenant
from tests.support.db import one_row
from tests.support.receiver import Receiver
from tests.support.wait import wait_until

NOTE = "sandbox: not sent"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


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


def _client(runtime: Runtime, token: str) -> httpx.AsyncClient:
    assert runtime.api is not None
    host, port = runtime.api.address
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"})


async def _sandbox_tenant(world: World, runtime: Runtime, domain: str) -> tuple[Tenant, str]:
    """An organization whose project is created as a sandbox through the API; its domain's
    DKIM key published in the loopback DNS. Returns the tenant and an admin API token."""
    assert runtime.db is not None
    pool = runtime.db.pool
    org = await orgs.create_organization(pool, f"org {domain}")
    _, token = await credentials.create_api_key(pool, org.id, "admin")
    async with _client(runtime, token) as c:
        made = await c.post(f"/v1/organizations/{org.id}/projects", json={"name": "try", "sandbox": True})
    assert made.status_code == 201, made.text
    assert made.json()["sandbox"] is True
    project_id = made.json()["id"]
    master_key = load_master_key(runtime.settings.secret_key, runtime.settings.data_dir)
    added = await add_sending_domain(pool, master_key, org.id, [project_id], domain)
    await domains.record_verification(pool, added.id, {"forced": True}, True)
    cred, password = await credentials.create_smtp_credential(pool, project_id)
    key = await one_row(pool, "SELECT dkim_selector, dkim_public_key FROM domains WHERE name = $1", domain)
    world.dns.zone.txt(
        f"{key['dkim_selector']}._domainkey.{domain}", f"v=DKIM1; k=rsa; p={key['dkim_public_key']}"
    )
    return Tenant(org.id, project_id, domain, cred.username, password), token


async def test_a_sandbox_message_is_signed_recorded_delivered_and_sent_nowhere(
    world: World, receiver: Receiver
) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime(webhooks_allow_private=True)
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant, token = await _sandbox_tenant(world, runtime, "sandbox.test")
    async with _client(runtime, token) as c:
        hook = await c.post(
            f"/v1/projects/{tenant.project_id}/webhooks",
            json={"url": receiver.url, "events": ["message.delivered"]},
        )
    assert hook.status_code == 201, hook.text
    quota_before = await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id)

    # One recipient whose domain has a recording MX, one whose domain has no DNS at all: a real
    # message would reach the first and defer or bounce the second.
    message_id = await world.submit(runtime, tenant, ["one@dest.test", "two@nowhere.test"])
    await wait_until(lambda: _status_is(runtime, message_id, "delivered"))

    assert sink.received == []  # recorded after signing; nothing was ever sent to the MX
    recipients = await pool.fetch(
        "SELECT address, status::text, last_code, last_text FROM recipients WHERE message_id = $1::uuid"
        " ORDER BY address",
        message_id,
    )
    assert [tuple(r) for r in recipients] == [
        ("one@dest.test", "delivered", 250, NOTE),
        ("two@nowhere.test", "delivered", 250, NOTE),
    ]
    attempts = await pool.fetch(
        "SELECT domain, mx_host, code, text FROM attempts WHERE message_id = $1::uuid ORDER BY domain",
        message_id,
    )
    assert [tuple(a) for a in attempts] == [
        ("dest.test", None, 250, NOTE),
        ("nowhere.test", None, 250, NOTE),
    ]
    quota_after = await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id)
    assert quota_after == quota_before + 1  # counted like any message

    # The webhook fires as for a real delivery.
    await wait_until(lambda: any(call.answered == 200 for call in receiver.calls))
    secret = hook.json()["secret"]
    payloads = [
        Webhook(secret).verify(c.body, {k: v for k, v in c.headers.items() if k.startswith("webhook-")})
        for c in receiver.calls
        if c.answered == 200
    ]
    assert [(p["type"], p["data"]["message_id"]) for p in payloads] == [("message.delivered", message_id)]
    assert payloads[0]["data"]["recipients"][0]["text"] == NOTE

    # The signed bytes, exactly as they would have gone out: DKIM verifies against the DNS.
    async with _client(runtime, token) as c:
        raw = await c.get(f"/v1/messages/{message_id}/raw")
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"].startswith("message/rfc822")
    assert raw.headers["remails-form"] == "signed"
    assert raw.content.startswith(b"DKIM-Signature:")
    assert b"d=sandbox.test" in raw.content.split(b"\r\n\r\n")[0]
    assert b"Your code is 123456." in raw.content
    assert dkim.verify(raw.content, dnsfunc=_dns_txt(world))


async def test_the_raw_route_serves_only_the_messages_own_tenant(world: World) -> None:
    await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant, _ = await _sandbox_tenant(world, runtime, "sandbox.test")
    message_id = await world.submit(runtime, tenant, ["one@dest.test"])
    await wait_until(lambda: _status_is(runtime, message_id, "delivered"))

    other = await orgs.create_organization(pool, "someone else")
    _, other_token = await credentials.create_api_key(pool, other.id, "admin")
    sibling = await orgs.create_project(pool, tenant.org_id, "sibling")
    _, sibling_token = await credentials.create_api_key(pool, tenant.org_id, "admin", sibling.id)
    _, reader_token = await credentials.create_api_key(pool, tenant.org_id, "read_only", tenant.project_id)
    for stranger in (other_token, sibling_token):
        async with _client(runtime, stranger) as c:
            refused = await c.get(f"/v1/messages/{message_id}/raw")
        assert refused.status_code == 404, refused.text
        assert b"DKIM-Signature" not in refused.content and b"123456" not in refused.content
    async with _client(runtime, reader_token) as c:
        own = await c.get(f"/v1/messages/{message_id}/raw")
    assert own.status_code == 200 and own.content.startswith(b"DKIM-Signature:")


async def test_a_project_that_is_no_sandbox_still_sends_and_serves_bytes_as_received(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    assert runtime.db is not None
    tenant = await world.tenant(runtime, "real.test")
    _, token = await credentials.create_api_key(runtime.db.pool, tenant.org_id, "admin")
    message_id = await world.submit(runtime, tenant, ["one@dest.test"])
    await wait_until(lambda: len(sink.received) == 1)
    await wait_until(lambda: _status_is(runtime, message_id, "delivered"))
    async with _client(runtime, token) as c:
        project = await c.get(f"/v1/projects/{tenant.project_id}")
        raw = await c.get(f"/v1/messages/{message_id}/raw")
    assert project.json()["sandbox"] is False
    assert raw.status_code == 200 and raw.headers["remails-form"] == "received"
    assert not raw.content.startswith(b"DKIM-Signature:")  # the stored bytes are the submitted ones
    assert sink.received[0].data.startswith(b"DKIM-Signature:")


async def _status_is(runtime: Runtime, message_id: str, status: str) -> bool:
    assert runtime.db is not None
    return await message_status(runtime.db.pool, message_id) == status
