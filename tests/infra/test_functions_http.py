"""Each function served by functions-framework as a real HTTP server, fed binary-mode
CloudEvents the way a Knative Broker sends them (with `Prefer: reply`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from remails.config import Settings
from remails.db import Pool
from remails.events import EventType, MessageEvent, make_event
from tests.factories import make_tenant, store_message
from tests.support.receiver import Receiver
from tests.support.sink import free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
FF = str(Path(sys.executable).with_name("functions-framework"))


@asynccontextmanager
async def serve(target: str, env: dict[str, str], source: str = "main.py") -> AsyncIterator[str]:
    port = free_port("127.0.0.1")
    process = await asyncio.create_subprocess_exec(
        FF,
        "--source",
        str(ROOT / "functions" / source),
        "--target",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                await client.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    try:
        await wait_until(up, bound=30)
        yield url
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def _binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(event)
    return {**headers, "Prefer": "reply"}, body


async def _post(
    url: str, event_or_request: CloudEvent | Callable[[], tuple[dict[str, str], bytes]]
) -> httpx.Response:
    headers, body = (
        _binary(event_or_request) if isinstance(event_or_request, CloudEvent) else event_or_request()
    )
    async with httpx.AsyncClient() as client:
        return await client.post(url, headers=headers, content=body, timeout=30)


async def test_validate_replies_with_the_next_event_then_acks_a_duplicate(
    pool: Pool, settings: Settings, dsn: str
) -> None:
    tenant = await make_tenant(pool, settings)
    message_id = await store_message(pool, tenant, ["user@dest.test"])
    received = make_event(
        EventType.MESSAGE_RECEIVED,
        MessageEvent(message_id=message_id, organization_id=tenant.org_id, project_id=tenant.project_id),
    )
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",
        "REMAILS_DATA_DIR": str(settings.data_dir),
    }
    async with serve("validate", env) as url:
        reply = await _post(url, received)
        assert reply.status_code == 200
        event = from_http(dict(reply.headers), reply.content)
        assert event["type"] == "message.validated" and event["msgid"] == str(message_id)
        duplicate = await _post(url, received)
        assert duplicate.status_code == 202 and duplicate.content == b""
        not_an_event = await _post(url, lambda: ({"content-type": "application/json"}, b'{"hello": 1}'))
        assert not_an_event.status_code == 400
        wrong_data = await _post(
            url, CloudEvent({"type": "message.received", "source": "/x"}, {"message_id": 5})
        )
        assert wrong_data.status_code == 400
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", message_id) == "validated"


async def test_a_function_that_crashes_answers_500_so_the_broker_retries(settings: Settings) -> None:
    env = {
        "REMAILS_DATABASE_URL": "postgresql://postgres@/postgres?host=/nonexistent",
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",
        "REMAILS_DATA_DIR": str(settings.data_dir),
    }
    event = make_event(
        EventType.MESSAGE_ADMITTED,
        MessageEvent(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4()),
    )
    async with serve("route", env) as url:
        assert (await _post(url, event)).status_code == 500


async def test_the_ticker_turns_a_ping_into_a_tick(settings: Settings, dsn: str) -> None:
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",
        "REMAILS_DATA_DIR": str(settings.data_dir),
    }
    ping = CloudEvent(
        {"type": "dev.knative.sources.ping", "source": "/apis/v1/namespaces/remails/pingsources/x"}, {}
    )
    async with serve("ticker", env) as url:
        reply = await _post(url, ping)
    assert reply.status_code == 200 and reply.headers["ce-type"] == "tick"


async def test_the_sweep_publishes_to_k_sink(pool: Pool, settings: Settings, dsn: str) -> None:
    tenant = await make_tenant(pool, settings)
    message_id = await store_message(pool, tenant, ["user@dest.test"])
    await pool.execute("UPDATE messages SET updated_at = now() - interval '1 hour' WHERE id = $1", message_id)
    sink = Receiver()
    await sink.start()
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": sink.url,
        "REMAILS_DATA_DIR": str(settings.data_dir),
    }
    tick = CloudEvent({"type": "tick", "source": "/remails/ticker"}, {"at": "2026-11-29T12:00:00Z"})
    try:
        async with serve("retry", env) as url:
            assert (await _post(url, tick)).status_code == 202
            await wait_until(lambda: len(sink.calls) == 1)
    finally:
        await sink.stop()
    assert sink.calls[0].headers["ce-type"] == "message.received"
    assert sink.calls[0].headers["ce-msgid"] == str(message_id)


TARGETS = {
    "validate": "message.received",
    "quota": "message.validated",
    "route": "message.admitted",
    "retry": "delivery.attempted",
    "webhooks": "message.delivered",
}


async def test_every_message_function_acks_an_unknown_message_and_refuses_a_non_event(
    settings: Settings, dsn: str
) -> None:
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",
        "REMAILS_DATA_DIR": str(settings.data_dir),
    }
    for target, event_type in TARGETS.items():
        data = {
            "message_id": str(uuid4()),
            "organization_id": str(uuid4()),
            "project_id": str(uuid4()),
            "status": "delivered",
            "webhooks": 1,
        }
        event = CloudEvent(
            {"type": event_type, "source": "/test", "datacontenttype": "application/json"}, data
        )
        async with serve(target, env) as url:
            ack = await _post(url, event)
            assert (ack.status_code, ack.content) == (202, b""), target
            assert (
                await _post(url, lambda: ({"content-type": "text/plain"}, b"hello"))
            ).status_code == 400, target


async def test_the_standalone_send_target_stores_a_message_and_throttles_bad_tokens(
    pool: Pool, settings: Settings, dsn: str
) -> None:
    from remails.db import credentials

    tenant = await make_tenant(pool, settings)
    _, token = await credentials.create_api_key(pool, tenant.org_id, "maintainer")
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",  # no broker: the notice is lost, the sweep would re-emit it
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_HOSTNAME": "mx.remails.test",
        "REMAILS_API_AUTH_FAILURE_BURST": "3",
    }
    body = {"from": f"app@{tenant.domain}", "to": ["ada@dest.test"], "subject": "hi", "text": "code"}
    async with serve("send", env, source="send_function.py") as url, httpx.AsyncClient() as client:
        path = f"{url}v1/projects/{tenant.project_id}/messages"
        accepted = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert accepted.status_code == 202, accepted.text
        stored = await pool.fetchval(
            "SELECT status::text FROM messages WHERE id = $1::uuid", accepted.json()["id"]
        )
        assert stored == "received"
        bad = [
            (await client.post(path, json=body, headers={"Authorization": "Bearer x.y"})).status_code
            for _ in range(4)
        ]
        assert bad == [401, 401, 401, 429]
