"""uvicorn inside our own event loop: started and stopped by the runtime, which owns signals.

Bounded like the SMTP edge: a connection that has not sent a whole request head within
`header_timeout` seconds is closed (uvicorn waits forever for the first request), and at most
`max_concurrency` connections and requests are served at once (503 above it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Sequence
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from remails.errors import SetupError

__all__ = ["HttpServer", "bounded_config"]

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONCURRENCY = 1000


class _BoundedH11(H11Protocol):
    """h11 with a deadline for each request head (slow-header clients hold no descriptor)."""

    header_timeout = DEFAULT_HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        # IDLE: no complete request line and headers since the connection or the last response.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)


def bounded_config(
    app: Any,
    host: str,
    port: int,
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    trusted_proxies: Sequence[str] = ("127.0.0.1/32", "::1/128"),
) -> uvicorn.Config:
    protocol = type("BoundedH11", (_BoundedH11,), {"header_timeout": header_timeout})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        lifespan="off",
        access_log=False,
        http=protocol,
        limit_concurrency=max_concurrency,
        # Given, never read from uvicorn's FORWARDED_ALLOW_IPS environment variable.
        proxy_headers=True,
        forwarded_allow_ips=list(trusted_proxies),
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the runtime handles SIGINT/SIGTERM and stops us


class HttpServer:
    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        trusted_proxies: Sequence[str] = ("127.0.0.1/32", "::1/128"),
    ) -> None:
        config = bounded_config(
            app,
            host,
            port,
            header_timeout=header_timeout,
            max_concurrency=max_concurrency,
            trusted_proxies=trusted_proxies,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:
            # uvicorn exits on a bind error: raise the OSError instead, an ordinary failure
            # (a SystemExit in a task would end the event loop before anything is closed).
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise

    async def start(self) -> None:
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise SetupError("the HTTP server stopped during start-up (is the port in use?)")
            await asyncio.sleep(0.01)

    @property
    def address(self) -> tuple[str, int]:
        sockname = self._server.servers[0].sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is None:
            return
        if self._task.done() and not self._server.started:
            return  # it never served: start() has raised its failure already
        await self._task
