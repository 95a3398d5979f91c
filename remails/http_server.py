"""uvicorn inside our own event loop: started and stopped by the runtime, which owns signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn

__all__ = ["HttpServer"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the runtime handles SIGINT/SIGTERM and stops us


class HttpServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off", access_log=False)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def address(self) -> tuple[str, int]:
        sockname = self._server.servers[0].sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
