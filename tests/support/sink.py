"""Recording SMTP sinks on 127.0.0.x: each records envelope, peer IP, TLS version and bytes,
and can be scripted to answer 4xx/5xx or to delay its reply."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    peer_ip: str
    helo: str | None
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls_version: str | None


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    # Scripted replies to DATA, used in order; when empty, "250 2.0.0 Ok".
    data_replies: deque[str] = field(default_factory=deque)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    data_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow MX: the client may give up or die meanwhile
            if server.transport is None or server.transport.is_closing():
                return "451 4.3.0 client went away"
        if self.data_replies:
            return self.data_replies.popleft()
        tls = session.ssl["cipher"][1] if session.ssl else None
        self.received.append(
            Received(
                peer_ip=str(session.peer[0] if isinstance(session.peer, tuple) else session.peer),
                helo=session.host_name,
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls_version=tls,
            )
        )
        self.arrived.set()
        return "250 2.0.0 Ok: stored"


class Sink:
    def __init__(self, ip: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.ip = ip
        self.port = port
        self.tls = tls
        self.handler = SinkHandler()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            return SMTP(
                self.handler,
                hostname=f"mx-{self.ip}.test",
                tls_context=self.tls,
                decode_data=False,
                enable_SMTPUTF8=True,
                loop=loop,
            )

        self._server = await loop.create_server(factory, self.ip, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def received(self) -> list[Received]:
        return self.handler.received


def free_port(ip: str = "127.0.0.10") -> int:
    import socket

    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def sink_server_tls(ca: Any, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context
