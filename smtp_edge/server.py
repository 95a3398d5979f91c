"""The SMTP edge: submission with STARTTLS and with implicit TLS, the inbound MX (bounces,
complaints, DMARC reports: `remails_smtp_edge.inbound`), and a graceful stop.

Before the banner, each connection passes the door: a PROXY header only from the load
balancers (`REMAILS_PROXY_TRUSTED_NETWORKS`), then the connection limits by real client
address, then (on the implicit-TLS port) the TLS handshake — in that order, because the PROXY
header comes in clear before the client's ClientHello.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import SMTP, Session, syntax

from remails import metrics
from remails.config import check_proxy_settings
from remails.context import Context
from remails.errors import Reply
from remails.log import log_event
from remails_smtp_edge.certificates import Certificates
from remails_smtp_edge.connections import ConnectionTable, proxy_peer_trusted
from remails_smtp_edge.data_reader import DataParser
from remails_smtp_edge.handler import EdgeHandler, client_ip
from remails_smtp_edge.inbound import InboundHandler
from remails_smtp_edge.paths import plain_path
from remails_smtp_edge.protocol_tables import init_protocol
from remails_smtp_edge.replies import SHUTTING_DOWN, with_enhanced_code
from remails_smtp_edge.throttle import AuthThrottle

__all__ = ["EdgeSMTP", "EdgeServer", "MxSMTP"]

logger = logging.getLogger("remails.edge")

BANNER_IDENT = "ESMTP Remails"
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands without a message, closing")
DATA_CHUNK = 256 * 1024  # at most this much of a message taken from the reader at a time

_Command = Callable[[Any, str], Awaitable[None]]


def _counted(method: _Command) -> _Command:
    """Every command counts towards the junk limit (made once per class, for each command)."""

    @functools.wraps(method)  # keeps the syntax HELP shows
    async def command(self: EdgeSMTP, arg: str) -> None:
        if await self._over_junk_limit():
            return
        await method(self, arg)

    return command


class EdgeSMTP(SMTP):
    """aiosmtpd's SMTP with enhanced status codes on every reply, the door before the banner,
    a junk-command limit and a DATA reader that keeps one copy of the message."""

    listener = "submission"  # the metrics label (implicit TLS: "submissions")

    def __init__(
        self,
        handler: EdgeHandler | InboundHandler,
        *,
        edge: EdgeServer,
        implicit_tls: bool,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd's __init__, with its per-connection scans done once per class.
        init_protocol(self, handler, wrap_command=_counted, **kwargs)
        self.edge = edge
        self.implicit_tls = implicit_tls
        self.in_data = False
        self.commands_without_message = 0
        self._admitted: str | None = None  # the client address counted in the table
        self._continued: list[str] = []  # lines of a multi-line reply not yet written

    @property
    def tls_active(self) -> bool:
        return self.session is not None and self.session.ssl is not None

    async def push(self, status: str | bytes) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        # Only a 220 or a 250 can be the greeting or a HELO/EHLO answer (left without a code).
        plain = text[:4] in ("220 ", "250 ") and (
            text.startswith(f"220 {self.hostname} ") or text in (f"250 {self.hostname}", "250 HELP")
        )
        line = with_enhanced_code(text, greeting_or_helo=plain)
        if line[3:4] == "-" and line[:3].isdigit():
            # A continuation line goes out with its reply's last one, in one write: EHLO's
            # eight lines were eight send() calls.
            self._continued.append(line)
            return
        if self._continued:
            line = "\r\n".join([*self._continued, line])
            self._continued.clear()
        await super().push(line)

    # -- the door --------------------------------------------------------------------------

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        if self.session is None:  # aiosmtpd makes the session in connection_made
            return
        metrics.SMTP_SESSIONS.labels("submissions" if self.implicit_tls else self.listener).inc()
        settings = self.edge.ctx.settings
        peer = str(self.session.peer[0]) if self.session.peer else ""
        if settings.proxy_protocol:
            if not proxy_peer_trusted(peer, settings.proxy_trusted_networks):
                log_event(logger, "proxy header from an untrusted peer refused", logging.WARNING, peer=peer)
                self._close()
                return
            self._reset_timeout(settings.smtp_proxy_timeout_seconds)
            proxy_data = await get_proxy(self._reader)
            if not proxy_data.valid:
                log_event(logger, "invalid proxy header", logging.WARNING, peer=peer, error=proxy_data.error)
                self._close()
                return
            self.session.proxy_data = proxy_data
            self._reset_timeout()
        address = client_ip(self.session)
        refusal = self.edge.connections.admit(address)
        if refusal is None:
            self._admitted = address
        if self.implicit_tls and not await self._start_tls():
            return
        if refusal is not None:
            log_event(logger, "connection refused", logging.WARNING, client_ip=address, reason=refusal.text)
            await self.push(str(refusal))
            self._close()
            return
        await super()._handle_client()

    async def _start_tls(self) -> bool:
        """The implicit-TLS handshake on a connection whose PROXY header is already read."""
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.edge.certificates.context, waiter, server_side=True
        )
        # A ClientHello that came in the same read as the PROXY header belongs to the handshake.
        leftover = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        if self.transport is None:  # the client went away before its handshake
            return False
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        if leftover:
            buffer = self._tls_protocol.get_buffer(len(leftover))
            buffer[: len(leftover)] = leftover
            self._tls_protocol.buffer_updated(len(leftover))
        try:
            await waiter
        except (OSError, ssl.SSLError, EOFError) as exc:
            log_event(logger, "tls handshake failed", logging.WARNING, error=str(exc))
            self._close()
            return False
        return True

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        self.tls_context = self.edge.certificates.context  # the current pair, reloaded or not
        await super().smtp_STARTTLS(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous: Session | None = self.session
        self.edge.sessions.add(self)
        super().connection_made(transport)
        # After a TLS handshake aiosmtpd starts a new session; the client is still the one the
        # PROXY header named.
        if previous is not None and self.session is not None and self.session is not previous:
            self.session.proxy_data = previous.proxy_data

    def connection_lost(self, error: Exception | None) -> None:
        self.edge.sessions.discard(self)
        if self._admitted is not None:
            self.edge.connections.release(self._admitted)
            self._admitted = None
        super().connection_lost(error)

    # -- junk commands ---------------------------------------------------------------------

    async def _over_junk_limit(self) -> bool:
        self.commands_without_message += 1
        if self.commands_without_message <= self.edge.ctx.settings.smtp_junk_command_limit:
            return False
        session = self.session
        log_event(
            logger,
            "too many commands without a message",
            logging.WARNING,
            client_ip=client_ip(session) if session is not None else "",
        )
        await self.push(str(TOO_MANY_COMMANDS))
        self._close()
        return True

    # -- MAIL and RCPT ---------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_path(arg) if arg and not self.local_part_limit else None
        if plain is not None:
            return plain
        return super()._getaddr(arg)

    # -- DATA ------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        try:
            content, problem = await self._read_data()
        finally:
            self.in_data = False
        if problem is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(problem)
            return
        # One bytearray, handed to the handler as is: it prepends its headers in place.
        self.envelope.content = content  # type: ignore[assignment]  # typed bytes; a buffer here
        self.envelope.original_content = content  # type: ignore[assignment]
        del content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        if isinstance(status, str) and status.startswith("250"):
            self.commands_without_message = 0
        await self.push(status if isinstance(status, str) else "250 OK")

    async def _read_data(self) -> tuple[bytearray, str | None]:
        """Read to the final dot into one growing buffer (`DataParser`, RFC 5321 §4.5.2),
        taking whatever the socket has at once. Past a limit the data is discarded but read to
        the end (RFC 5321 §4.2.5)."""
        parser = DataParser(self.data_size_limit, self.line_length_limit)
        while True:
            try:
                chunk = await self._reader.read(DATA_CHUNK)
            except asyncio.CancelledError:
                self._writer.close()
                raise
            if not chunk:
                raise asyncio.IncompleteReadError(b"", None)
            leftover = parser.feed(chunk)
            if leftover is not None:
                if leftover:  # commands pipelined after the final dot: back for the command loop
                    self._reader._buffer[:0] = leftover  # type: ignore[attr-defined]
                return parser.content, parser.problem


class MxSMTP(EdgeSMTP):
    """The inbound MX: the same door, limits and DATA reader; STARTTLS offered; no AUTH,
    because nothing is submitted here (RCPT decides what we take)."""

    listener = "mx"

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH is not offered on this port")


class EdgeServer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        settings = ctx.settings
        check_proxy_settings(settings)  # also for settings not made by load_settings
        self.handler = EdgeHandler(
            ctx, AuthThrottle(settings.auth_max_failures, settings.auth_failure_window_seconds)
        )
        self.inbound = InboundHandler(ctx)
        self.sessions: set[EdgeSMTP] = set()
        self.connections = ConnectionTable(
            settings.smtp_max_connections, settings.smtp_max_connections_per_ip
        )
        self.certificates = Certificates(settings)
        self._servers: list[asyncio.Server] = []
        self._addresses: list[tuple[str, int]] = []

    def submission_options(self, implicit_tls: bool) -> dict[str, Any]:
        """aiosmtpd's options for a submission session."""
        settings = self.ctx.settings
        return {
            "hostname": settings.hostname,
            "ident": BANNER_IDENT,
            "data_size_limit": settings.smtp_max_message_size,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            # Implicit TLS: the edge itself does the handshake after the door, so no STARTTLS.
            "tls_context": None if implicit_tls else self.certificates.context,
            "auth_require_tls": True,
            "auth_required": False,  # enforced at MAIL, so trusted networks can submit without AUTH
            "timeout": settings.smtp_session_timeout_seconds,
            "loop": asyncio.get_running_loop(),
        }

    def mx_options(self) -> dict[str, Any]:
        """aiosmtpd's options for an inbound MX session."""
        settings = self.ctx.settings
        return {
            "hostname": settings.hostname,
            "ident": BANNER_IDENT,
            "data_size_limit": settings.smtp_max_message_size,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "tls_context": self.certificates.context,
            "auth_exclude_mechanism": ["LOGIN", "PLAIN"],
            "auth_required": False,
            "timeout": settings.smtp_session_timeout_seconds,
            "loop": asyncio.get_running_loop(),
        }

    def _factory(self, implicit_tls: bool) -> EdgeSMTP:
        return EdgeSMTP(
            self.handler, edge=self, implicit_tls=implicit_tls, **self.submission_options(implicit_tls)
        )

    def _mx_factory(self) -> MxSMTP:
        return MxSMTP(self.inbound, edge=self, implicit_tls=False, **self.mx_options())

    async def start(self) -> None:
        settings = self.ctx.settings
        loop = asyncio.get_running_loop()
        host, port = settings.smtp_submission_listen
        # Several worker processes of `remails up` share the listeners (the kernel spreads the
        # connections over them).
        shared = settings.workers > 1
        submission = await loop.create_server(lambda: self._factory(False), host, port, reuse_port=shared)
        host, port = settings.smtp_tls_listen
        implicit = await loop.create_server(lambda: self._factory(True), host, port, reuse_port=shared)
        host, port = settings.smtp_mx_listen
        mx = await loop.create_server(self._mx_factory, host, port, reuse_port=shared)
        self._servers = [submission, implicit, mx]
        self._addresses = [self._bound(submission), self._bound(implicit), self._bound(mx)]
        self.certificates.start()
        log_event(
            logger,
            "smtp edge listening",
            submission=self.submission_address,
            implicit_tls=self.tls_address,
            mx=self.mx_address,
            pid=os.getpid(),
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

    @property
    def mx_address(self) -> tuple[str, int]:
        return self._addresses[2]

    def _busy(self) -> bool:
        storing = self.handler.storing + self.inbound.storing
        return any(s.in_data for s in self.sessions) or storing > 0

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let sessions in DATA finish (up to `grace` s); close the rest."""
        await self.certificates.stop()
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
