"""One SMTP transaction to one destination: try its MX hosts in order, from the egress source,
with opportunistic STARTTLS (RFC 7435) that falls back to cleartext on the same MX when the
handshake fails (like Postfix's `may`), reusing an idle connection to the same MX when there
is one, and record every recipient's reply."""

from __future__ import annotations

import contextlib
import pathlib
import re
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from remails.db.pipeline import AttemptRecord
from remails.outcomes import split_enhanced
from remails_sender_node.connections import CachedConnection
from remails_sender_node.mx import MxHost
from remails_sender_node.payload import Payload
from remails_sender_node.pipelining import exchange, message_data
from remails_sender_node.site_queue import Ticket
from remails_sender_node.transaction_plan import Plan, mail_options, plan_transaction

__all__ = ["Envelope", "TlsPolicy", "contained", "deliver", "failed_attempt"]

Reply = tuple[int | None, str | None, str]

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
DEFAULT_STEP_TIMEOUT = 60.0  # when the client has none set


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: list[str]
    payload: Payload


class TlsPolicy:
    """How to use STARTTLS, with its one client context (building one costs ~20 ms)."""

    def __init__(self, *, require_verified: bool, ca_file: pathlib.Path | None = None) -> None:
        self.require_verified = require_verified
        context = ssl.create_default_context()
        if ca_file is not None:  # REMAILS_TLS_CA_FILE: private CAs trusted beside the system's
            context.load_verify_locations(cafile=ca_file)
        if not require_verified:
            # Opportunistic TLS: encrypt even when the certificate cannot be verified (RFC 7435).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.context = context

    def __repr__(self) -> str:
        return f"TlsPolicy(require_verified={self.require_verified})"


@dataclass(frozen=True)
class Path:
    """Where and how to connect: the egress source, one MX address, our EHLO name."""

    host: MxHost
    ip: str
    port: int
    source_ip: str
    hostname: str
    tls: TlsPolicy
    step_timeout: float


class _ConnectionFailed(Exception):
    """Nothing was said with this host (connect, greeting, EHLO or TLS failed): try the next.
    `reply`: the 4xx the host greeted (or answered EHLO) with, e.g. a throttling 421."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class _LostBeforeData(Exception):
    """The connection died before DATA: nothing was delivered, so another connection may try."""


def _reply(code: int, message: str) -> tuple[int, str | None, str]:
    enhanced, text = split_enhanced(message)
    return code, enhanced, text


def _client(path: Path) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=path.ip,
        port=path.port,
        local_hostname=path.hostname,
        source_address=(path.source_ip, 0),
        start_tls=False,
        timeout=path.step_timeout,
    )


async def _greet(path: Path) -> aiosmtplib.SMTP:
    client = _client(path)
    try:
        await client.connect()
        await client.ehlo()
    except (aiosmtplib.SMTPException, OSError) as exc:
        client.close()
        reply = None
        if isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code <= 499:
            reply = _reply(exc.code, exc.message)
        message = f"{path.host.name}[{path.ip}]: {type(exc).__name__}: {exc}"
        raise _ConnectionFailed(message, reply) from exc
    return client


def _tls_failure(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


async def _connect(path: Path) -> CachedConnection:
    connection = await _open(path)
    connection.path = (path.source_ip, path.ip, path.port)
    connection.verified = path.tls.require_verified
    return connection


async def _open(path: Path) -> CachedConnection:
    client = await _greet(path)
    if not client.supports_extension("starttls"):
        if path.tls.require_verified:
            client.close()
            raise _ConnectionFailed(f"4.7.5 TLS required but {path.host.name} does not offer STARTTLS")
        return CachedConnection(client, None, time.monotonic())
    try:
        await client.starttls(server_hostname=path.host.name, tls_context=path.tls.context)
    except aiosmtplib.SMTPResponseException as exc:  # refused with a reply: still in cleartext
        if path.tls.require_verified or not client.is_connected:
            client.close()
            raise _ConnectionFailed(f"{path.host.name}[{path.ip}]: STARTTLS refused: {exc.code}") from exc
        note = f"none, STARTTLS refused: {exc.code} {exc.message}"[:200]
        return CachedConnection(client, None, time.monotonic(), tls_note=note)
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        return await _cleartext_after(path, client, exc)
    try:
        await client.ehlo()
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:  # dropped right after the handshake
        return await _cleartext_after(path, client, exc)
    ssl_object = client.get_transport_info("ssl_object")
    tls_version = ssl_object.version() if ssl_object is not None else None
    return CachedConnection(client, tls_version, time.monotonic(), tls_note=tls_version)


async def _cleartext_after(path: Path, client: aiosmtplib.SMTP, exc: BaseException) -> CachedConnection:
    """After a failed TLS handshake: like Postfix's `may`, the same MX again in cleartext;
    with verified TLS required, this MX has failed."""
    client.close()
    reason = _tls_failure(exc)
    if path.tls.require_verified:
        raise _ConnectionFailed(f"{path.host.name}[{path.ip}]: TLS failed: {reason}") from exc
    fresh = await _greet(path)
    return CachedConnection(fresh, None, time.monotonic(), tls_note=f"none, handshake failed: {reason}")


async def _command(client: aiosmtplib.SMTP, verb: bytes, argument: bytes, *options: str) -> Reply | None:
    """One MAIL or RCPT with the address exactly as planned (aiosmtplib's own would re-parse
    it); None on success, else the refusal."""
    response = await client.execute_command(verb, argument, *(o.encode("ascii") for o in options))
    if response.code in (250, 251):
        return None
    return _reply(response.code, response.message)


async def _transaction(client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[dict[str, Reply], Reply]:
    """MAIL, RCPT for each recipient, DATA if any was accepted; the replies per recipient."""
    offers = set(client.esmtp_extensions)
    payload = envelope.payload
    plan = plan_transaction(
        envelope.mail_from,
        envelope.recipients,
        eight_bit=payload.eight_bit,
        utf8_headers=payload.utf8_headers,
        offers=offers,
    )
    replies: dict[str, Reply] = dict(plan.refused)
    if not plan.recipients:
        return replies, next(iter(replies.values()))
    data = await payload.data(seven_bit=plan.seven_bit)
    encoding = "utf-8" if plan.smtputf8 else "ascii"
    if "pipelining" in offers:
        return await _pipelined_transaction(client, plan, data, encoding, offers, replies)
    try:
        sender = b"FROM:<" + plan.mail_from.encode(encoding) + b">"
        refusal = await _command(client, b"MAIL", sender, *mail_options(plan, len(data), offers))
        if refusal is not None:
            return {**replies, **{r: refusal for r in plan.recipients}}, refusal
        accepted = []
        for address, wire in plan.recipients.items():
            refusal = await _command(client, b"RCPT", b"TO:<" + wire.encode(encoding) + b">")
            if refusal is None:
                accepted.append(address)
            else:
                replies[address] = refusal
        if not accepted:
            await client.rset()
            return replies, next(iter(replies.values()))
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise _LostBeforeData(str(exc)) from exc
    try:
        response = await client.data(data)
        final: Reply = _reply(response.code, response.message)
    except aiosmtplib.SMTPResponseException as exc:
        final = _reply(exc.code, exc.message)
    for rcpt in accepted:
        replies[rcpt] = final
    return replies, final


def _command_line(verb: bytes, argument: bytes, *options: str) -> bytes:
    line = b" ".join((verb, argument, *(o.encode("ascii") for o in options)))
    if _CONTROL.search(line):  # never a second command inside an address
        raise ValueError("a command argument holds a control character")
    return line + b"\r\n"


async def _pipelined_transaction(
    client: aiosmtplib.SMTP,
    plan: Plan,
    data: bytes,
    encoding: str,
    offers: set[str],
    replies: dict[str, Reply],
) -> tuple[dict[str, Reply], Reply]:
    """The transaction of `_transaction` with PIPELINING (RFC 2920): MAIL, the RCPTs and DATA
    in one write; the message follows a 354, or a lone dot when no recipient was taken."""
    sender = b"FROM:<" + plan.mail_from.encode(encoding) + b">"
    block = [_command_line(b"MAIL", sender, *mail_options(plan, len(data), offers))]
    block += [_command_line(b"RCPT", b"TO:<" + w.encode(encoding) + b">") for w in plan.recipients.values()]
    block.append(b"DATA\r\n")
    step = client.timeout or DEFAULT_STEP_TIMEOUT
    try:
        mail, *rcpts, start = await exchange(client, b"".join(block), len(block), step)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise _LostBeforeData(str(exc)) from exc
    if mail.code not in (250, 251):
        refusal = _reply(mail.code, mail.message)
        await _end_data(client, start, step)
        return {**replies, **{r: refusal for r in plan.recipients}}, refusal
    accepted = []
    for address, reply in zip(plan.recipients, rcpts, strict=True):
        if reply.code in (250, 251):
            accepted.append(address)
        else:
            replies[address] = _reply(reply.code, reply.message)
    if not accepted:
        await _end_data(client, start, step)
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # the refusals stand
            await client.rset()
        return replies, next(iter(replies.values()))
    if start.code != 354:
        final = _reply(start.code, start.message)
    else:
        (done,) = await exchange(client, message_data(data), 1, step)
        final = _reply(done.code, done.message)
    for rcpt in accepted:
        replies[rcpt] = final
    return replies, final


async def _end_data(client: aiosmtplib.SMTP, start: SMTPResponse, reply_seconds: float) -> None:
    """DATA was pipelined behind a refused MAIL or RCPTs: a server that still answered 354
    gets a lone dot, so that no message goes out (RFC 2920, 3.1)."""
    if start.code == 354:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # the refusal stands
            await exchange(client, b".\r\n", 1, reply_seconds)


async def deliver(
    domain: str,
    hosts: list[MxHost],
    envelope: Envelope,
    *,
    ticket: Ticket,
    source_ip: str,
    port: int,
    hostname: str,
    tls: TlsPolicy,
    step_timeout: float,
    unreachable: str = "4.4.1",
) -> AttemptRecord:
    """Try the MX hosts in order until one holds a conversation (the ticket's idle connection
    first, when it has one); a connection-level failure moves to the next, an SMTP reply (even
    4xx) ends the attempt. The connection used stays on the ticket for its queue to take back.
    `unreachable`: the enhanced code when none held one (4.7.5 when a policy demanded
    verified TLS)."""
    started = time.monotonic()
    errors: list[str] = []
    paths = [
        Path(host, ip, port, source_ip, hostname, tls, step_timeout)
        for host in hosts
        for ip in host.addresses
    ]
    if ticket.connection is not None:
        reused = ticket.connection.path
        paths.sort(key=lambda p: (p.source_ip, p.ip, p.port) != reused)  # stable: the rest keep their order
    greeted: tuple[str, Reply] | None = None  # the last host that refused us with a 4xx greeting
    for path in paths:
        host, ip = path.host, path.ip
        try:
            connection, replies, (code, enhanced, text) = await _on_path(path, ticket, envelope)
        except (_ConnectionFailed, _LostBeforeData) as exc:
            errors.append(str(exc))
            if isinstance(exc, _ConnectionFailed) and exc.reply is not None:
                greeted = (host.name, exc.reply)
            continue
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Lost during or after DATA: it may have arrived; deferred, the retry may duplicate.
            text = f"connection lost during DATA with {host.name}[{ip}]: {type(exc).__name__}"
            return failed_attempt(domain, envelope.recipients, source_ip, "4.4.2", text, started)
        return AttemptRecord(
            domain=domain,
            recipients=envelope.recipients,
            mx_host=host.name,
            source_ip=source_ip,
            tls_version=connection.tls_note,
            code=code,
            enhanced=enhanced,
            text=text,
            duration_ms=int((time.monotonic() - started) * 1000),
            replies=replies,
        )
    if greeted is not None:  # a server's own word (a 421 "try again later") is recorded as such
        name, reply = greeted
        return AttemptRecord(
            domain=domain,
            recipients=envelope.recipients,
            mx_host=name,
            source_ip=source_ip,
            tls_version=None,
            code=reply[0],
            enhanced=reply[1],
            text=reply[2],
            duration_ms=int((time.monotonic() - started) * 1000),
            replies=dict.fromkeys(envelope.recipients, reply),
        )
    text = "no MX host answered: " + "; ".join(errors[-3:])
    return failed_attempt(domain, envelope.recipients, source_ip, unreachable, text, started)


async def _on_path(
    path: Path, ticket: Ticket, envelope: Envelope
) -> tuple[CachedConnection, dict[str, Reply], Reply]:
    """One transaction on the ticket's connection when it goes to this path, or on a new one
    when there is none or it turns out to be closed before DATA. A connection that fails is
    closed and leaves the ticket (its slot stays, for the next path)."""
    connection = ticket.connection
    if connection is not None and connection.path != (path.source_ip, path.ip, path.port):
        connection = None  # kept on the ticket until a new one replaces it
    if connection is not None:
        try:
            replies, final = await _transaction(connection.client, envelope)
        except _LostBeforeData:
            _drop(ticket)
            connection = None
        except BaseException:
            _drop(ticket)
            raise
    if connection is None:
        _drop(ticket)  # the slot holds one connection at a time: the old one goes first
        ticket.connection = connection = await _connect(path)
        try:
            replies, final = await _transaction(connection.client, envelope)
        except BaseException:
            _drop(ticket)
            raise
    connection.messages += 1
    return connection, replies, final


def _drop(ticket: Ticket) -> None:
    if ticket.connection is not None:
        ticket.connection.client.close()
        ticket.connection = None


def failed_attempt(
    domain: str, recipients: list[str], source_ip: str, enhanced: str, text: str, started: float
) -> AttemptRecord:
    """An attempt that reached no server (DNS or connection failure): no SMTP code."""
    return AttemptRecord(
        domain=domain,
        recipients=recipients,
        mx_host=None,
        source_ip=source_ip,
        tls_version=None,
        code=None,
        enhanced=enhanced,
        text=text,
        duration_ms=int((time.monotonic() - started) * 1000),
        replies={r: (None, enhanced, text) for r in recipients},
    )


async def contained(
    attempt: Awaitable[AttemptRecord], domain: str, recipients: list[str], source_ip: str
) -> AttemptRecord:
    """The attempt's record or, whatever it raised, this destination's temporary failure
    (4.3.0 with the reason): an exception never escapes one destination's delivery."""
    started = time.monotonic()
    try:
        return await attempt
    except Exception as exc:
        reason = f"local error while delivering: {type(exc).__name__}: {exc}"[:300]
        return failed_attempt(domain, recipients, source_ip, "4.3.0", reason, started)
