"""One SMTP transaction to one destination: try its MX hosts in order, from the egress source,
with opportunistic STARTTLS (RFC 7435), and record every recipient's reply."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from remails.db.pipeline import AttemptRecord
from remails.outcomes import split_enhanced
from sender_node.mx import MxHost

__all__ = ["Envelope", "TlsPolicy", "deliver"]


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


class _ConnectionFailed(Exception):
    """Nothing was said with this host (connect, greeting, EHLO or TLS failed): try the next."""


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


async def _transaction(
    host: MxHost,
    ip: str,
    port: int,
    source_ip: str,
    hostname: str,
    envelope: Envelope,
    tls: TlsPolicy,
    step_timeout: float,
) -> tuple[dict[str, tuple[int | None, str | None, str]], str | None, tuple[int, str | None, str]]:
    client = aiosmtplib.SMTP(
        hostname=ip,
        port=port,
        local_hostname=hostname,
        source_address=(source_ip, 0),
        start_tls=False,
        timeout=step_timeout,
    )
    try:
        await client.connect()
        await client.ehlo()
        if client.supports_extension("starttls"):
            await client.starttls(server_hostname=host.name, tls_context=tls.context())
            await client.ehlo()
        elif tls.require_verified:
            raise _ConnectionFailed("4.7.5 TLS required but the server does not offer STARTTLS")
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        client.close()
        raise _ConnectionFailed(f"{host.name}[{ip}]: {type(exc).__name__}: {exc}") from exc
    tls_version = None
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is not None:
        tls_version = ssl_object.version()
    replies: dict[str, tuple[int | None, str | None, str]] = {}
    try:
        try:
            await client.mail(envelope.mail_from, options=_mail_options(client, envelope))
        except aiosmtplib.SMTPResponseException as exc:
            refusal = _reply(exc.code, exc.message)
            return {r: refusal for r in envelope.recipients}, tls_version, refusal
        accepted = []
        for rcpt in envelope.recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                replies[rcpt] = _reply(exc.code, exc.message)
        if not accepted:
            await client.rset()
            last = next(iter(replies.values()))
            return replies, tls_version, (int(last[0] or 0), last[1], last[2])
        try:
            response = await client.data(envelope.data)
            final = _reply(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            final = _reply(exc.code, exc.message)
        for rcpt in accepted:
            replies[rcpt] = final
        return replies, tls_version, final
    finally:
        if client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def deliver(
    domain: str,
    hosts: list[MxHost],
    envelope: Envelope,
    *,
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
            try:
                replies, tls_version, (code, enhanced, text) = await _transaction(
                    host, ip, port, source_ip, hostname, envelope, tls, step_timeout
                )
            except (_ConnectionFailed, aiosmtplib.SMTPException, OSError) as exc:
                errors.append(str(exc))
                continue
            return AttemptRecord(
                domain=domain,
                recipients=envelope.recipients,
                mx_host=host.name,
                source_ip=source_ip,
                tls_version=tls_version,
                code=code,
                enhanced=enhanced,
                text=text,
                duration_ms=int((time.monotonic() - started) * 1000),
                replies=replies,
            )
    text = "no MX host answered: " + "; ".join(errors[-3:])
    return failed_attempt(domain, envelope.recipients, source_ip, "4.4.1", text, started)


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
