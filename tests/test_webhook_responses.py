"""What a receiver answers cannot hold a webhook worker: the body is read up to a cap, and the
whole POST is bounded by the timeout, even when bytes keep trickling in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, webhook_deliveries
from remails.db.rows import required
from remails.webhook_endpoints import create_endpoint
from remails_functions.webhooks import send_due
from tests.factories import make_tenant
from tests.support.recording import RecordingPublisher


@contextlib.asynccontextmanager
async def _server(answer: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            await answer(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        # connections the client dropped are closed by their handlers
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


async def _endless_body(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    while True:  # until the client hangs up
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def _trickled_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:  # one header byte at a time, each well within the read timeout
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _deliver_once(pool: Pool, settings: Settings, url: str, **overrides: Any) -> dict[str, Any]:
    settings = load_settings(**{**settings.model_dump(), "webhooks_allow_private": True, **overrides})
    master_key = load_master_key(None, settings.data_dir)
    tenant = await make_tenant(pool, settings)
    endpoint, _ = await create_endpoint(
        pool, settings, master_key, tenant.project_id, url, ["message.delivered"]
    )
    delivery_id = await webhook_deliveries.enqueue_test(pool, endpoint.id, {"type": "webhook.test"})
    ctx = Context(settings, pool, RecordingPublisher(), master_key)
    assert await asyncio.wait_for(send_due(ctx, None, max_batches=1), 15) == 1
    row = required(
        await pool.fetchrow(
            "SELECT status, last_status_code, last_error FROM webhook_deliveries WHERE id = $1", delivery_id
        )
    )
    return dict(row)


async def test_an_endless_response_body_is_cut_at_the_cap(pool: Pool, settings: Settings) -> None:
    async with _server(_endless_body) as url:
        row = await _deliver_once(
            pool, settings, url, webhook_timeout_seconds=3.0, webhook_response_max_bytes=65536
        )
    assert row == {"status": "delivered", "last_status_code": 200, "last_error": None}


async def test_a_trickling_answer_ends_at_the_timeout(pool: Pool, settings: Settings) -> None:
    async with _server(_trickled_head) as url:
        row = await _deliver_once(pool, settings, url, webhook_timeout_seconds=1.0)
    assert row == {"status": "pending", "last_status_code": None, "last_error": "timeout"}
