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

from remails.config import load_settings
from remails.errors import ConfigError
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


async def _client_seen(address: tuple[str, int], source: str, forwarded_for: str) -> str:
    """What the app takes for the client when `source` connects and sends X-Forwarded-For."""
    reader, writer = await asyncio.open_connection(*address, local_addr=(source, 0))
    writer.write(
        f"GET /client HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: {forwarded_for}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return response.split(b"\r\n\r\n", 1)[1].decode()


async def test_only_a_trusted_proxy_names_the_client() -> None:
    """REMAILS_HTTP_TRUSTED_PROXIES: a hop in those networks is skipped and the address it
    forwarded for is the client; anyone else is the client themselves, whatever they claim."""

    async def client(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.client.host if request.client else "")

    settings = load_settings(http_trusted_proxies="127.0.0.2, 127.0.10.0/24")
    server = HttpServer(
        Starlette(routes=[Route("/client", client)]),
        "127.0.0.1",
        0,
        trusted_proxies=settings.http_trusted_proxies,
    )
    await server.start()
    try:
        # The ingress (127.0.10.5) forwarded for the browser; the queue-proxy (127.0.0.2) for it.
        chain = "198.51.100.1, 203.0.113.9, 127.0.10.5"  # the first one the browser made up
        assert await _client_seen(server.address, "127.0.0.2", chain) == "203.0.113.9"
        assert await _client_seen(server.address, "127.0.0.3", chain) == "127.0.0.3"
    finally:
        await server.stop()
    assert load_settings().http_trusted_proxies == ["127.0.0.1/32", "::1/128"]
    with pytest.raises(ConfigError, match="REMAILS_HTTP_TRUSTED_PROXIES: 'ingress' does not appear"):
        load_settings(http_trusted_proxies="10.0.0.0/8,ingress")
