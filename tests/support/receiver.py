"""A webhook receiver on 127.0.0.1: records every request, answers scripted status codes."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from remails.http_server import HttpServer


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    calls: list[Call] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)  # used in order; then 200
    hang: bool = False
    server: HttpServer | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if self.hang:
            await self._released.wait()  # a receiver that does not answer (until stopped)
            return Response(status_code=503)
        status = self.statuses.popleft() if self.statuses else 200
        self.calls.append(Call(dict(request.headers), body, status))
        return Response(status_code=status)

    async def start(self, port: int = 0) -> None:
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        self.server = HttpServer(app, "127.0.0.1", port)
        await self.server.start()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.address
        return f"http://{host}:{port}/hook"

    async def stop(self) -> None:
        self._released.set()
        if self.server is not None:
            await self.server.stop()
