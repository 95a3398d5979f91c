"""The aiosmtpd handler: each hook gathers facts, asks a pure decision, replies.

Identity from AUTH (or a trusted network) lives on the session; everything about one message
lives on the envelope. A message is answered 250 only after it and its recipients are committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from aiosmtpd.smtp import AuthResult, Envelope, Session, TLSSetupException

from remails import metrics
from remails.acceptance import announce_received
from remails.context import Context
from remails.db import orgs
from remails.db.credentials import SmtpIdentity, authenticate_smtp, get_smtp_credential
from remails.db.messages import NewMessage, insert_messages
from remails.errors import AuthRequired, BareLineEnding, TemporaryFailure
from remails.log import log_event
from remails.message_headers import (
    has_bare_line_ending,
    prepend_headers,
    prepend_headers_in_place,
    received_header,
    trace_domain,
)
from remails.sending_policy import address_domain, check_sender
from remails_smtp_edge.group_commit import GroupCommit, StoreFailed
from remails_smtp_edge.policy import check_address_charset, check_recipient_count, trusted_project
from remails_smtp_edge.replies import (
    AUTH_THROTTLED,
    BAD_RECIPIENT,
    CREDENTIAL_REVOKED,
    RECIPIENT_OK,
    SENDER_OK,
    queued,
)
from remails_smtp_edge.store_budget import StoreBudget
from remails_smtp_edge.throttle import AuthThrottle, Verdict

if TYPE_CHECKING:
    from remails_smtp_edge.server import EdgeSMTP

__all__ = ["EdgeHandler"]

logger = logging.getLogger("remails.edge")

_TEMPORARY = TemporaryFailure().smtp_reply()
FACTS_SECONDS = 1.0


def client_ip(session: Session) -> str:
    """The real client: from the PROXY header when a load balancer sent one."""
    if session.proxy_data is not None and session.proxy_data.src_addr:
        return str(session.proxy_data.src_addr)
    return str(session.peer[0]) if session.peer else ""


class EdgeHandler:
    def __init__(self, ctx: Context, throttle: AuthThrottle) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.throttle = throttle
        self._auth_settled = asyncio.Condition()  # an attempt in flight ended: waiters re-decide
        self.store_budget = StoreBudget(ctx.settings.smtp_store_budget_bytes)
        self.storing = 0  # DATA hooks in progress, for a graceful shutdown
        self._facts: dict[UUID, tuple[float, orgs.SenderFacts]] = {}
        self._credentials: dict[UUID, tuple[float, bool]] = {}  # id -> (when seen, exists)
        self.group_commit = GroupCommit(
            self._write_messages,
            ctx.settings.smtp_accept_batch_max,
            ctx.settings.smtp_accept_batch_wait_ms / 1000,
        )

    async def _write_messages(self, batch: list[NewMessage]) -> set[UUID]:
        return await insert_messages(self.ctx.pool, batch, self.settings.message_lifetime_seconds)

    # -- connection -----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # a client's failed handshake, not our fault
            log_event(logger, "tls handshake failed", logging.WARNING, error=str(error.__cause__))
        else:
            logger.error("smtp session error", exc_info=error)
        return _TEMPORARY

    # -- AUTH (async: the credential lookup is a database query) ---------------------------

    async def auth_PLAIN(self, server: EdgeSMTP, args: list[str]) -> AuthResult:
        blob = await self._initial_response(server, args, challenge="")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: EdgeSMTP, args: list[str]) -> AuthResult:
        login = await self._initial_response(server, args, challenge="User Name\0")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password\0")
        if not isinstance(password, bytes):  # MISSING: already answered 501
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _initial_response(self, server: EdgeSMTP, args: list[str], challenge: str) -> bytes | None:
        if len(args) == 1:
            answer = await server.challenge_auth(challenge)
            return answer if isinstance(answer, bytes) else None  # MISSING: already answered 501
        try:
            return base64.b64decode(args[1], validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Can't decode base64")
            return None

    async def _authenticate(self, server: EdgeSMTP, login: bytes, password: bytes) -> AuthResult:
        if server.session is None:  # aiosmtpd sets it before any command
            return AuthResult(success=False, handled=False)
        ip = client_ip(server.session)
        username = login.decode("utf-8", errors="replace")[:128]
        keys = [f"ip:{ip}", f"user:{username}"]
        if await self._reserve_attempt(keys) != "go":
            log_event(logger, "auth throttled", logging.WARNING, client_ip=ip, username=username)
            metrics.AUTH_FAILURES.inc()
            await server.push(str(AUTH_THROTTLED))
            if server.transport is not None:
                server.transport.close()
            return AuthResult(success=False, handled=True)
        identity = None
        try:
            identity = await authenticate_smtp(
                self.ctx.pool, username, password.decode("utf-8", errors="replace")
            )
        finally:
            self.throttle.settle(keys, time.monotonic(), failed=identity is None)
            async with self._auth_settled:
                self._auth_settled.notify_all()
        if identity is None:
            log_event(logger, "auth failed", logging.WARNING, client_ip=ip, username=username)
            metrics.AUTH_FAILURES.inc()
            return AuthResult(success=False, handled=False)  # handled=False: aiosmtpd answers 535
        log_event(logger, "auth ok", client_ip=ip, username=username, project_id=identity.project_id)
        self._remember_credential(identity.credential_id, True)  # just read from the database
        return AuthResult(success=True, auth_data=identity)

    async def _reserve_attempt(self, keys: list[str]) -> Verdict:
        """`go` once the attempt is counted in flight, or `blocked`. While earlier attempts
        in flight could still use up the limit, wait for them to settle (bounded by the
        session timeout, after which the attempt counts as throttled)."""
        verdict = self.throttle.reserve(keys, time.monotonic())
        if verdict != "wait":
            return verdict
        async with self._auth_settled:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.smtp_session_timeout_seconds):
                    while (verdict := self.throttle.reserve(keys, time.monotonic())) == "wait":
                        await self._auth_settled.wait()
        return "blocked" if verdict == "wait" else verdict

    # -- transaction ----------------------------------------------------------------------

    async def _identity(self, session: Session) -> SmtpIdentity | None:
        if isinstance(session.auth_data, SmtpIdentity):
            return session.auth_data
        project = trusted_project(client_ip(session), self.settings.trusted_networks)
        if project is None:
            return None
        try:
            project_id = UUID(project)
        except ValueError:
            return None
        facts = await self._sender_facts(project_id)  # the same facts MAIL then checks
        if facts is None:
            log_event(
                logger,
                "trusted network names an unknown project",
                logging.ERROR,
                project_id=project,
            )
            return None
        identity = SmtpIdentity(None, facts.project_id, facts.organization_id)
        session.auth_data = identity  # type: ignore[assignment]  # aiosmtpd types it as None
        return identity

    async def _credential_live(self, identity: SmtpIdentity) -> bool:
        """A credential revoked while its session is open is refused for good (5.7.8), not
        stored against a missing row (a 451 the client would retry forever). The insert of
        each message checks it too; this earlier check at MAIL reuses what AUTH or the last
        check found for FACTS_SECONDS, so a session of one message costs no extra query."""
        if identity.credential_id is None:  # a trusted network: no credential to revoke
            return True
        now = time.monotonic()
        cached = self._credentials.get(identity.credential_id)
        if cached is not None and now - cached[0] < FACTS_SECONDS:
            return cached[1]
        live = await get_smtp_credential(self.ctx.pool, identity.credential_id) is not None
        self._remember_credential(identity.credential_id, live)
        return live

    def _remember_credential(self, credential_id: UUID | None, live: bool) -> None:
        if credential_id is None:
            return
        if len(self._credentials) > 10_000:
            self._credentials.clear()
        self._credentials[credential_id] = (time.monotonic(), live)

    async def _sender_facts(self, project_id: UUID) -> orgs.SenderFacts | None:
        """A project's facts, kept for FACTS_SECONDS: the edge's check is an early courtesy
        refusal; the quota function counts atomically whatever gets through."""
        now = time.monotonic()
        cached = self._facts.get(project_id)
        if cached is not None and now - cached[0] < FACTS_SECONDS:
            return cached[1]
        facts = await orgs.sender_facts(self.ctx.pool, project_id)
        if facts is None:
            self._facts.pop(project_id, None)
            return None
        if len(self._facts) > 10_000:
            self._facts.clear()
        self._facts[project_id] = (now, facts)
        return facts

    async def handle_MAIL(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        identity = await self._identity(session)
        if identity is None:
            return AuthRequired().smtp_reply()
        facts = await self._sender_facts(identity.project_id)
        if facts is None:  # the project was deleted during the session
            return AuthRequired().smtp_reply()
        if not await self._credential_live(identity):
            return str(CREDENTIAL_REVOKED)
        charset = check_address_charset(address, envelope.smtp_utf8)
        if charset is not None:
            return str(charset)
        refusal = check_sender(facts, address)
        if refusal is not None:
            log_event(
                logger,
                "sender refused",
                client_ip=client_ip(session),
                project_id=identity.project_id,
                sender_domain=address_domain(address),
                reason=refusal.error_code,
            )
            return refusal.smtp_reply()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(SENDER_OK)

    async def handle_RCPT(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = check_recipient_count(len(envelope.rcpt_tos), self.settings.smtp_max_recipients)
        if refusal is not None:
            return refusal.smtp_reply()
        if address_domain(address) is None:
            return str(BAD_RECIPIENT)
        charset = check_address_charset(address, envelope.smtp_utf8)
        if charset is not None:
            return str(charset)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(RECIPIENT_OK)

    async def handle_DATA(self, server: EdgeSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if has_bare_line_ending(data):
            log_event(logger, "bare line ending refused", logging.WARNING, client_ip=client_ip(session))
            return BareLineEnding().smtp_reply()
        identity = session.auth_data
        if not isinstance(identity, SmtpIdentity) or envelope.mail_from is None:
            return AuthRequired().smtp_reply()
        # Whether the credential still exists is checked by the insert itself (see _store).
        self.storing += 1
        try:
            return await self._store(server, session, envelope, identity, data)
        finally:
            self.storing -= 1

    async def _store(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        identity: SmtpIdentity,
        data: bytes,
    ) -> str:
        if envelope.mail_from is None:  # aiosmtpd answers DATA before MAIL itself
            return "503 5.5.1 Error: need MAIL command"
        message_id = uuid4()
        now = datetime.now(UTC)
        kind = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"  # RFC 6531 §4.3
        protocol = kind + ("S" if server.tls_active else "") + ("A" if session.authenticated else "")
        # The client's IP is left out of the trace on purpose: it is the customer's server.
        trace = received_header(
            from_domain=trace_domain(session.host_name),
            by=self.settings.hostname,
            protocol=protocol,
            message_id=str(message_id),
            now=now,
        )
        if isinstance(data, bytearray):  # the edge's DATA buffer: headers go in without a copy
            raw: bytes | bytearray = data
            message_id_header = prepend_headers_in_place(
                data, hostname=self.settings.hostname, message_id=str(message_id), now=now, trace=trace
            )
        else:
            raw, message_id_header = prepend_headers(
                data, hostname=self.settings.hostname, message_id=str(message_id), now=now, trace=trace
            )
        new = NewMessage(
            organization_id=identity.organization_id,
            project_id=identity.project_id,
            mail_from=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            raw=raw,
            message_id_header=message_id_header,
            smtp_credential_id=identity.credential_id,
            id=message_id,
        )
        try:
            async with self.store_budget.hold(len(raw)):
                stored = await self.group_commit.store(new)
        except Exception as exc:
            log_event(
                logger,
                "store failed",
                logging.ERROR,
                error=exc.cause if isinstance(exc, StoreFailed) else type(exc).__name__,
                client_ip=client_ip(session),
            )
            return _TEMPORARY
        if not stored:  # the credential was revoked while the session was open
            self._remember_credential(identity.credential_id, False)
            return str(CREDENTIAL_REVOKED)
        log_event(
            logger,
            "message received",
            message_id=message_id,
            project_id=identity.project_id,
            recipients=len(new.recipients),
            size=len(raw),
            worker=self.settings.worker_index,
        )
        await announce_received(self.ctx, new, "smtp")
        return queued(str(message_id))
