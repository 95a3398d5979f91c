"""The HTTP server is bounded like the SMTP edge: a client that never finishes its request head
is disconnected, and connections beyond the limit are answered 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from remails.http_server import HttpServer

Start = Callable[..., Awaitable[HttpServer]]


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[HttpServer] = []

    async def run(**bounds: float) -> HttpServer:
        server = HttpServer(Starlette(routes=[Route("/", _ok)]), "127.0.0.1", 0, **bounds)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        await server.stop()


async def _request(address: tuple[str, int]) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return status


async def test_a_request_head_not_finished_in_time_is_disconnected(start: Start) -> None:
    server = await start(header_timeout=0.3)
    assert (await _request(server.address)).startswith(b"HTTP/1.1 200")
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET / HTTP/1.1\r\nHost: api.test\r\n")  # and never the blank line
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, within a bound
    writer.close()


async def test_a_silent_connection_is_disconnected(start: Start) -> None:
    server = await start(header_timeout=0.3)
    reader, writer = await asyncio.open_connection(*server.address)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_connections_beyond_the_limit_are_answered_503(start: Start) -> None:
    server = await start(max_concurrency=2, header_timeout=30)
    held = [await asyncio.open_connection(*server.address) for _ in range(2)]
    assert (await _request(server.address)).startswith(b"HTTP/1.1 503")
    for _, writer in held:
        writer.close()
