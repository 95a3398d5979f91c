"""Webhooks end to end: outcomes reach a local receiver, signed (verified with the
standardwebhooks library), retried with a stable webhook-id, and never lost to a crash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from remails.db import credentials
from remails.runtime import Runtime
from remails.types import WebhookEventType, literal_values
from tests.e2e.conftest import Spawned, World
from tests.factories import Tenant
from tests.support.receiver import Receiver
from tests.support.wait import wait_until

ALL = list(literal_values(WebhookEventType))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def _endpoint(
    runtime: Runtime | Spawned, tenant: Tenant, url: str, events: list[str] = ALL
) -> tuple[dict[str, Any], str]:
    assert runtime.db is not None and runtime.api is not None
    _, token = await credentials.create_api_key(runtime.db.pool, tenant.org_id, "admin")
    host, port = runtime.api.address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        response = await c.post(
            f"/v1/projects/{tenant.project_id}/webhooks", json={"url": url, "events": events}
        )
    assert response.status_code == 201, response.text
    return response.json(), token


def _verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every call's payload, each signature checked by the standardwebhooks library."""
    hook = Webhook(secret)
    payloads = []
    for call in receiver.calls:
        if call.answered != 200:
            continue
        payload = hook.verify(call.body, {k: v for k, v in call.headers.items() if k.startswith("webhook-")})
        payloads.append(payload)
    return payloads


async def test_delivered_deferred_and_bounced_reach_the_receiver_signed(
    world: World, receiver: Receiver
) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.rcpt_replies["gone@dest.test"] = "550 5.1.1 No such user"
    runtime = await world.runtime(webhooks_allow_private=True)
    tenant = await world.tenant(runtime, "example.test")
    endpoint, _ = await _endpoint(runtime, tenant, receiver.url)

    delivered = await world.submit(runtime, tenant, ["ok@dest.test"])
    await wait_until(lambda: any(c.body and b"message.delivered" in c.body for c in receiver.calls))
    sink.handler.data_replies.append("451 4.3.0 later")
    later = await world.submit(runtime, tenant, ["later@dest.test"])
    bounced = await world.submit(runtime, tenant, ["gone@dest.test"])
    await wait_until(lambda: len(_verified(receiver, endpoint["secret"])) == 4, bound=20)

    by_message: dict[str, list[str]] = {}
    for payload in _verified(receiver, endpoint["secret"]):
        by_message.setdefault(payload["data"]["message_id"], []).append(payload["type"])
        assert set(payload) == {"id", "type", "timestamp", "data"}
        data = payload["data"]
        assert data["project_id"] == str(tenant.project_id)
        assert "raw" not in data and "body" not in data
    assert by_message[delivered] == ["message.delivered"]
    assert by_message[later] == ["message.deferred", "message.delivered"]
    assert by_message[bounced] == ["message.bounced"]
    bounce = next(p for p in _verified(receiver, endpoint["secret"]) if p["type"] == "message.bounced")
    [recipient] = bounce["data"]["recipients"]
    assert recipient == {
        "address": "gone@dest.test",
        "status": "bounced",
        "code": 550,
        "enhanced_code": "5.1.1",
        "text": "No such user",
    }
    assert bounce["data"]["message_id_header"].startswith("<")
    assert bounce["data"]["outbound_ip"] in ("127.0.0.2", "127.0.0.3", "127.0.0.4")


async def test_a_failing_receiver_gets_the_event_on_the_third_try_with_the_same_id(
    world: World, receiver: Receiver
) -> None:
    await world.sink("dest.test", "127.0.0.10")
    receiver.statuses.extend([500, 500])
    runtime = await world.runtime(webhooks_allow_private=True, webhook_retry_schedule="0s,200ms,200ms,1s")
    tenant = await world.tenant(runtime, "example.test")
    endpoint, token = await _endpoint(runtime, tenant, receiver.url, ["message.delivered"])
    await world.submit(runtime, tenant, ["ok@dest.test"])
    await wait_until(lambda: len(receiver.calls) == 3, bound=20)
    assert [c.answered for c in receiver.calls] == [500, 500, 200]
    assert len({c.headers["webhook-id"] for c in receiver.calls}) == 1
    assert len(_verified(receiver, endpoint["secret"])) == 1
    assert runtime.api is not None
    host, port = runtime.api.address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        [delivery] = (await c.get(f"/v1/webhooks/{endpoint['id']}/deliveries")).json()
    assert (
        delivery["status"] == "delivered"
        and delivery["attempts"] == 3
        and delivery["last_status_code"] == 200
    )


async def test_a_4xx_is_not_retried(world: World, receiver: Receiver) -> None:
    await world.sink("dest.test", "127.0.0.10")
    receiver.statuses.append(410)
    runtime = await world.runtime(webhooks_allow_private=True, webhook_retry_schedule="0s,100ms,100ms")
    tenant = await world.tenant(runtime, "example.test")
    await _endpoint(runtime, tenant, receiver.url, ["message.delivered"])
    await world.submit(runtime, tenant, ["ok@dest.test"])
    assert runtime.db is not None
    pool = runtime.db.pool
    await wait_until(lambda: _delivery_status(pool, "failed"))
    assert [c.answered for c in receiver.calls] == [410]


async def _delivery_status(pool: Any, status: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = $1", status))


async def test_killed_after_the_status_change_the_webhook_still_arrives(
    world: World, receiver: Receiver
) -> None:
    await world.sink("dest.test", "127.0.0.10")
    receiver.hang = True  # the first POST never gets an answer: the runtime dies waiting
    settings = {"webhooks_allow_private": True, "webhook_timeout_seconds": 1.0}
    runtime = await world.spawn(**settings)  # a process, so that the crash is a real SIGKILL
    tenant = await world.tenant(runtime, "example.test")
    endpoint, _ = await _endpoint(runtime, tenant, receiver.url, ["message.delivered"])
    message_id = await world.submit(runtime, tenant, ["ok@dest.test"])
    assert runtime.db is not None
    pool = runtime.db.pool
    await wait_until(lambda: _status_is(pool, message_id, "delivered"))
    await world.crash(runtime)  # SIGKILL: nothing is flushed or finished
    receiver.hang = False
    await world.runtime(**settings)
    await wait_until(lambda: any(c.answered == 200 for c in receiver.calls), bound=20)
    [payload] = _verified(receiver, endpoint["secret"])
    assert payload["type"] == "message.delivered" and payload["data"]["message_id"] == message_id


async def _status_is(pool: Any, message_id: str, status: str) -> bool:
    return bool(
        await pool.fetchval("SELECT status::text = $2 FROM messages WHERE id = $1::uuid", message_id, status)
    )


async def test_private_addresses_are_refused_unless_allowed(world: World) -> None:
    runtime = await world.runtime()  # webhooks_allow_private is off by default
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.api is not None
    _, token = await credentials.create_api_key(runtime.db.pool, tenant.org_id, "admin")
    world.dns.zone.a("internal.example.test", "10.0.0.5")
    host, port = runtime.api.address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        for url in [
            "http://127.0.0.1:9/hook",
            "https://127.0.0.1/hook",
            "https://169.254.169.254/latest",
            "https://[::1]/hook",
            "https://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
            "https://internal.example.test/hook",
            "ftp://example.test/x",
        ]:
            response = await c.post(
                f"/v1/projects/{tenant.project_id}/webhooks", json={"url": url, "events": ALL}
            )
            assert response.status_code == 422, (url, response.text)
            assert response.json()["error"]["field"] == "url"


async def test_secret_rotation_keeps_the_old_secret_valid(world: World, receiver: Receiver) -> None:
    await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime(webhooks_allow_private=True)
    tenant = await world.tenant(runtime, "example.test")
    endpoint, token = await _endpoint(runtime, tenant, receiver.url, ["message.delivered"])
    assert runtime.api is not None
    host, port = runtime.api.address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as c:
        new_secret = (await c.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret")).json()["secret"]
        listed = (await c.get(f"/v1/projects/{tenant.project_id}/webhooks")).text
        test = await c.post(f"/v1/webhooks/{endpoint['id']}/test")
    assert test.status_code == 202
    assert endpoint["secret"] not in listed and new_secret not in listed
    await wait_until(lambda: len(receiver.calls) == 1)
    assert json.loads(receiver.calls[0].body)["type"] == "webhook.test"
    assert len(_verified(receiver, new_secret)) == 1
    assert len(_verified(receiver, endpoint["secret"])) == 1  # both signatures during the grace period


async def test_an_endpoint_failing_too_long_is_disabled_and_the_organization_told(
    world: World, receiver: Receiver
) -> None:
    await world.sink("dest.test", "127.0.0.10")
    receiver.statuses.extend([500] * 50)
    runtime = await world.runtime(
        webhooks_allow_private=True,
        webhook_retry_schedule="0s,300ms,300ms,300ms,300ms,300ms",
        webhook_disable_after_seconds=0.5,
    )
    tenant = await world.tenant(runtime, "example.test")
    endpoint, token = await _endpoint(runtime, tenant, receiver.url, ["message.delivered"])
    await world.submit(runtime, tenant, ["ok@dest.test"])
    assert runtime.api is not None
    host, port = runtime.api.address
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as c:

        async def disabled() -> bool:
            return (await c.get(f"/v1/webhooks/{endpoint['id']}")).json()["enabled"] is False

        await wait_until(disabled, bound=20)
        shown = (await c.get(f"/v1/webhooks/{endpoint['id']}")).json()
        notices = (await c.get(f"/v1/organizations/{tenant.org_id}/notifications")).json()
        [delivery] = (await c.get(f"/v1/webhooks/{endpoint['id']}/deliveries")).json()
    assert shown["disabled_reason"].startswith("failing continuously since")
    assert delivery["status"] == "dropped" and delivery["finished_at"] is not None
    assert [(n["kind"], n["subject_id"]) for n in notices] == [("webhook.disabled", endpoint["id"])]
    assert receiver.url in notices[0]["message"]
