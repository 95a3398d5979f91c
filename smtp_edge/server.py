"""The SMTP edge: submission with STARTTLS and with implicit TLS, and a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiosmtpd.smtp import SMTP

from remails.context import Context
from remails.log import log_event
from remails.tls import server_context
from smtp_edge.handler import EdgeHandler
from smtp_edge.replies import SHUTTING_DOWN, with_enhanced_code
from smtp_edge.throttle import AuthThrottle

__all__ = ["EdgeSMTP", "EdgeServer"]

logger = logging.getLogger("remails.edge")

BANNER_IDENT = "ESMTP Remails"


class EdgeSMTP(SMTP):
    """aiosmtpd's SMTP with enhanced status codes on every reply and session bookkeeping."""

    def __init__(
        self, handler: EdgeHandler, *, implicit_tls: bool, sessions: set[EdgeSMTP], **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.implicit_tls = implicit_tls
        self.in_data = False
        self._sessions = sessions

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or (self.session is not None and self.session.ssl is not None)

    async def push(self, status: str | bytes) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        plain = text.startswith(f"220 {self.hostname} ") or text in (
            f"250 {self.hostname}",
            "250 HELP",
        )
        await super().push(with_enhanced_code(text, greeting_or_helo=plain))

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)


class EdgeServer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.handler = EdgeHandler(
            ctx, AuthThrottle(settings.auth_max_failures, settings.auth_failure_window_seconds)
        )
        self.sessions: set[EdgeSMTP] = set()
        self._servers: list[asyncio.Server] = []
        self._addresses: list[tuple[str, int]] = []

    def _factory(self, tls_context: ssl.SSLContext, implicit_tls: bool) -> EdgeSMTP:
        settings = self.ctx.settings
        return EdgeSMTP(
            self.handler,
            implicit_tls=implicit_tls,
            sessions=self.sessions,
            hostname=settings.hostname,
            ident=BANNER_IDENT,
            data_size_limit=settings.smtp_max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            # Implicit TLS: the socket is already encrypted, so no STARTTLS and AUTH is allowed.
            tls_context=None if implicit_tls else tls_context,
            auth_require_tls=not implicit_tls,
            auth_required=False,  # enforced at MAIL, so trusted networks can submit without AUTH
            proxy_protocol_timeout=5 if settings.proxy_protocol else None,
            timeout=300,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        settings = self.ctx.settings
        tls_context = server_context(settings)
        loop = asyncio.get_running_loop()
        host, port = settings.smtp_submission_listen
        # Several worker processes of `remails up` share the listeners (the kernel spreads the
        # connections over them).
        shared = settings.workers > 1
        submission = await loop.create_server(
            lambda: self._factory(tls_context, False), host, port, reuse_port=shared
        )
        host, port = settings.smtp_tls_listen
        implicit = await loop.create_server(
            lambda: self._factory(tls_context, True), host, port, ssl=tls_context, reuse_port=shared
        )
        self._servers = [submission, implicit]
        self._addresses = [self._bound(submission), self._bound(implicit)]
        log_event(
            logger,
            "smtp edge listening",
            submission=self.submission_address,
            implicit_tls=self.tls_address,
        )

    @staticmethod
    def _bound(server: asyncio.Server) -> tuple[str, int]:
        sockname = server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def submission_address(self) -> tuple[str, int]:
        return self._addresses[0]

    @property
    def tls_address(self) -> tuple[str, int]:
        return self._addresses[1]

    def _busy(self) -> bool:
        return any(s.in_data for s in self.sessions) or self.handler.storing > 0

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let sessions in DATA finish (up to `grace` s); close the rest."""
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace
        while self._busy() and time.monotonic() < deadline:  # noqa: ASYNC110  (bounded, once)
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            transport = session.transport
            if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
                transport.write(f"{SHUTTING_DOWN}\r\n".encode())
                transport.close()
        for server in self._servers:
            await server.wait_closed()
        log_event(logger, "smtp edge stopped")
