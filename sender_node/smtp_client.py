"""One SMTP transaction to one destination: try its MX hosts in order, from the egress source,
with opportunistic STARTTLS (RFC 7435), reusing an idle connection to the same MX when there
is one, and record every recipient's reply."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from remails.db.pipeline import AttemptRecord
from remails.outcomes import split_enhanced
from sender_node.connections import CachedConnection, ConnectionCache
from sender_node.mx import MxHost

__all__ = ["Envelope", "TlsPolicy", "deliver", "failed_attempt"]

Reply = tuple[int | None, str | None, str]


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    recipients: list[str]
    data: bytes  # signed, CRLF line endings


@dataclass(frozen=True)
class TlsPolicy:
    require_verified: bool

    def context(self) -> ssl.SSLContext:
        if self.require_verified:
            return ssl.create_default_context()
        # Opportunistic TLS: encrypt even when the certificate cannot be verified (RFC 7435).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


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
    """Nothing was said with this host (connect, greeting, EHLO or TLS failed): try the next."""


class _LostBeforeData(Exception):
    """The connection died before DATA: nothing was delivered, so another connection may try."""


def _reply(code: int, message: str) -> tuple[int, str | None, str]:
    enhanced, text = split_enhanced(message)
    return code, enhanced, text


def _mail_options(client: aiosmtplib.SMTP, envelope: Envelope) -> list[str]:
    options = []
    if client.supports_extension("size"):
        options.append(f"SIZE={len(envelope.data)}")
    if client.supports_extension("8bitmime") and not envelope.data.isascii():
        options.append("BODY=8BITMIME")
    if client.supports_extension("smtputf8") and not envelope.mail_from.isascii():
        options.append("SMTPUTF8")
    return options


async def _connect(path: Path) -> CachedConnection:
    client = aiosmtplib.SMTP(
        hostname=path.ip,
        port=path.port,
        local_hostname=path.hostname,
        source_address=(path.source_ip, 0),
        start_tls=False,
        timeout=path.step_timeout,
    )
    try:
        await client.connect()
        await client.ehlo()
        if client.supports_extension("starttls"):
            await client.starttls(server_hostname=path.host.name, tls_context=path.tls.context())
            await client.ehlo()
        elif path.tls.require_verified:
            raise _ConnectionFailed("4.7.5 TLS required but the server does not offer STARTTLS")
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        client.close()
        raise _ConnectionFailed(f"{path.host.name}[{path.ip}]: {type(exc).__name__}: {exc}") from exc
    ssl_object = client.get_transport_info("ssl_object")
    tls_version = ssl_object.version() if ssl_object is not None else None
    return CachedConnection(client, tls_version, time.monotonic())


async def _transaction(client: aiosmtplib.SMTP, envelope: Envelope) -> tuple[dict[str, Reply], Reply]:
    """MAIL, RCPT for each recipient, DATA if any was accepted; the replies per recipient."""
    replies: dict[str, Reply] = {}
    try:
        try:
            await client.mail(envelope.mail_from, options=_mail_options(client, envelope))
        except aiosmtplib.SMTPResponseException as exc:
            refusal = _reply(exc.code, exc.message)
            return {r: refusal for r in envelope.recipients}, refusal
        accepted = []
        for rcpt in envelope.recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                replies[rcpt] = _reply(exc.code, exc.message)
        if not accepted:
            await client.rset()
            return replies, next(iter(replies.values()))
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise _LostBeforeData(str(exc)) from exc
    try:
        response = await client.data(envelope.data)
        final: Reply = _reply(response.code, response.message)
    except aiosmtplib.SMTPResponseException as exc:
        final = _reply(exc.code, exc.message)
    for rcpt in accepted:
        replies[rcpt] = final
    return replies, final


async def deliver(
    domain: str,
    hosts: list[MxHost],
    envelope: Envelope,
    *,
    cache: ConnectionCache,
    source_ip: str,
    port: int,
    hostname: str,
    tls: TlsPolicy,
    step_timeout: float,
) -> AttemptRecord:
    """Try the MX hosts in order until one holds a conversation; a connection-level failure
    moves to the next, an SMTP reply (even 4xx) ends the attempt."""
    started = time.monotonic()
    errors: list[str] = []
    for host in hosts:
        for ip in host.addresses:
            path = Path(host, ip, port, source_ip, hostname, tls, step_timeout)
            key = (source_ip, ip, port)
            try:
                connection, replies, (code, enhanced, text) = await _on_path(path, key, cache, envelope)
            except (_ConnectionFailed, _LostBeforeData) as exc:
                errors.append(str(exc))
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
                tls_version=connection.tls_version,
                code=code,
                enhanced=enhanced,
                text=text,
                duration_ms=int((time.monotonic() - started) * 1000),
                replies=replies,
            )
    text = "no MX host answered: " + "; ".join(errors[-3:])
    return failed_attempt(domain, envelope.recipients, source_ip, "4.4.1", text, started)


async def _on_path(
    path: Path, key: tuple[str, str, int], cache: ConnectionCache, envelope: Envelope
) -> tuple[CachedConnection, dict[str, Reply], Reply]:
    """One transaction on a cached connection, or on a new one when there is none or the cached
    one turns out to be closed before DATA. The connection goes back to the cache if it lives."""
    connection = cache.take(key)
    if connection is not None:
        try:
            replies, final = await _transaction(connection.client, envelope)
        except _LostBeforeData:
            connection.client.close()
            connection = None
    if connection is None:
        connection = await _connect(path)
        try:
            replies, final = await _transaction(connection.client, envelope)
        except BaseException:
            connection.client.close()
            raise
    cache.give_back(key, connection)
    return connection, replies, final


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
