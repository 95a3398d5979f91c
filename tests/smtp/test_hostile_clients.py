"""The edge under hostile clients, over real sockets: who may send a PROXY header, the client
address through STARTTLS and implicit TLS, concurrent AUTH, connection and command limits, a
credential revoked mid-session, and a certificate renewed under open sessions."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
import sys

import aiosmtplib
import pytest
import trustme

from remails.config import ConfigError, load_settings
from remails.db import credentials
from tests.smtp.conftest import HOSTNAME, Edge, EdgeFactory, proxy_v2
from tests.support.rawsmtp import RawSmtp
from tests.support.wait import wait_until

MESSAGE = b"From: app@example.test\r\nTo: user@dest.test\r\nSubject: code\r\n\r\nYour code is 123456.\r\n"


def _plain(username: str, password: str) -> str:
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode()


async def _closed(raw: RawSmtp) -> bool:
    """The server closed the connection (EOF or reset), within a bound."""
    try:
        return await asyncio.wait_for(raw.reader.read(), 5) == b""
    except ConnectionError:
        return True


async def _starttls(raw: RawSmtp, edge: Edge) -> None:
    assert (await raw.command("EHLO client.test")).startswith("250")
    assert (await raw.command("STARTTLS")).startswith("220")
    await raw.writer.start_tls(edge.client_tls, server_hostname=HOSTNAME)
    assert (await raw.command("EHLO client.test")).startswith("250")


# -- PROXY protocol ------------------------------------------------------------------------


def test_proxy_protocol_without_trusted_networks_fails_start_up_with_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(proxy_protocol=True)
    assert str(info.value).startswith("REMAILS_PROXY_TRUSTED_NETWORKS: ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMAILS_")}
    result = subprocess.run(
        [sys.executable, "-m", "remails.cli", "up"],
        env={**env, "REMAILS_PROXY_PROTOCOL": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "REMAILS_PROXY_TRUSTED_NETWORKS" in line


async def test_a_proxy_header_from_an_untrusted_peer_closes_the_connection(
    edge_factory: EdgeFactory,
) -> None:
    # The balancers are in 10.0.0.0/8; this peer (127.0.0.1) claims to be a trusted client.
    edge = await edge_factory(
        proxy_protocol=True, proxy_trusted_networks="10.0.0.0/8", trusted_cidr="10.9.8.0/24"
    )
    for address in (edge.submission, edge.implicit):
        raw = await RawSmtp.connect(address, prefix=proxy_v2("10.9.8.7"))
        with pytest.raises(ConnectionError):
            await raw.reply()  # no banner: closed at the door
        await raw.close()
    assert await edge.stored_count() == 0


async def test_the_proxy_address_survives_starttls(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(
        proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8", trusted_cidr="10.9.8.0/24"
    )
    outcomes = {}
    for src in ("10.9.8.7", "192.0.2.1"):
        raw = await RawSmtp.connect(edge.submission, prefix=proxy_v2(src))
        assert (await raw.reply()).startswith("220")
        await _starttls(raw, edge)
        outcomes[src] = await raw.command("MAIL FROM:<app@example.test>")
        await raw.close()
    assert outcomes["10.9.8.7"].startswith("250")  # still the trusted client after STARTTLS
    assert outcomes["192.0.2.1"].startswith("530 5.7.0")  # and the balancer is not trusted


async def test_the_auth_throttle_sees_the_proxy_address_after_starttls(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8", auth_max_failures=2)

    async def auth(src: str, username: str, password: str) -> str:
        raw = await RawSmtp.connect(edge.submission, prefix=proxy_v2(src))
        await raw.reply()
        await _starttls(raw, edge)
        reply = await raw.command(f"AUTH PLAIN {_plain(username, password)}")
        await raw.close()
        return reply

    for _ in range(2):
        assert (await auth("192.0.2.66", "nobody", "wrong")).startswith("535")
    assert (await auth("192.0.2.66", edge.tenant.username, edge.tenant.password)).startswith("454 4.7.0")
    # Another client behind the same balancer is not locked out.
    assert (await auth("192.0.2.7", edge.tenant.username, edge.tenant.password)).startswith("235")


async def test_implicit_tls_reads_the_proxy_header_before_the_handshake(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(
        proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8", trusted_cidr="10.9.8.0/24"
    )
    reader, writer = await asyncio.open_connection(*edge.implicit)
    writer.write(proxy_v2("10.9.8.7"))  # the ClientHello follows at once, as a balancer relays it
    await asyncio.wait_for(writer.start_tls(edge.client_tls, server_hostname=HOSTNAME), 10)
    raw = RawSmtp(reader, writer)
    assert (await raw.reply()).startswith("220 mx.remails.test")
    ehlo = await raw.command("EHLO client.test")
    assert "STARTTLS" not in ehlo and "AUTH" in ehlo
    assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")  # the trusted client
    assert (await raw.command("RCPT TO:<user@dest.test>")).startswith("250")
    assert (await raw.command("DATA")).startswith("354")
    await raw.send(MESSAGE + b".\r\n")
    assert (await raw.reply()).startswith("250 2.0.0 Ok: queued as")
    await raw.close()
    assert await edge.stored_count() == 1


async def test_a_client_hello_in_the_same_segment_as_the_proxy_header_is_not_lost(
    edge_factory: EdgeFactory,
) -> None:
    edge = await edge_factory(proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8")
    reader, writer = await asyncio.open_connection(*edge.implicit)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = edge.client_tls.wrap_bio(incoming, outgoing, server_hostname=HOSTNAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    writer.write(proxy_v2("192.0.2.1") + outgoing.read())  # one write: header and ClientHello

    async def pump() -> None:
        if outgoing.pending:
            writer.write(outgoing.read())
        data = await asyncio.wait_for(reader.read(65536), 10)
        if not data:
            raise ConnectionError("closed during the handshake")
        incoming.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            await pump()
    writer.write(outgoing.read())
    banner = b""
    while not banner.endswith(b"\r\n"):
        try:
            banner += tls.read(4096)
        except ssl.SSLWantReadError:
            await pump()
    writer.close()
    assert banner.startswith(b"220 mx.remails.test")


# -- AUTH ----------------------------------------------------------------------------------


async def test_concurrent_auth_attempts_from_one_address_reach_the_password_check_at_most_the_limit(
    edge_factory: EdgeFactory,
) -> None:
    edge = await edge_factory(auth_max_failures=5, smtp_max_connections_per_ip=500)
    sessions = []
    for _ in range(200):
        raw = await RawSmtp.connect(edge.submission)
        await raw.reply()
        await _starttls(raw, edge)
        sessions.append(raw)
    token = _plain(edge.tenant.username, "wrong")
    for raw in sessions:  # all 200 on the wire before any answer is read
        raw.writer.write(f"AUTH PLAIN {token}\r\n".encode())
    replies = await asyncio.gather(*(raw.reply() for raw in sessions))
    for raw in sessions:
        await raw.close()
    checked = [r for r in replies if r.startswith("535")]  # each 535 was a password lookup
    assert len(checked) <= 5, len(checked)
    assert all(r.startswith(("535", "454 4.7.0")) for r in replies)


# -- connection and command limits -----------------------------------------------------------


async def _banner(address: tuple[str, int], prefix: bytes = b"") -> tuple[RawSmtp, str]:
    raw = await RawSmtp.connect(address, prefix=prefix)
    return raw, await raw.reply()


async def test_connections_per_client_address_are_limited_and_freed_on_close(
    edge_factory: EdgeFactory,
) -> None:
    edge = await edge_factory(smtp_max_connections_per_ip=3)
    held = [await _banner(edge.submission) for _ in range(3)]
    assert all(banner.startswith("220") for _, banner in held)
    raw, banner = await _banner(edge.submission)
    assert banner.startswith("421 4.7.0")
    assert await _closed(raw)
    await raw.close()
    await held[0][0].close()
    await wait_until(lambda: edge.server.connections.total == 2)
    raw, banner = await _banner(edge.submission)  # a slot was freed
    assert banner.startswith("220")
    for session, _ in [*held[1:], (raw, "")]:
        await session.close()


async def test_the_per_address_limit_counts_the_proxy_address(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(
        proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8", smtp_max_connections_per_ip=2
    )
    held = [await _banner(edge.submission, proxy_v2("192.0.2.1")) for _ in range(2)]
    assert all(banner.startswith("220") for _, banner in held)
    refused, banner = await _banner(edge.submission, proxy_v2("192.0.2.1"))
    assert banner.startswith("421 4.7.0")
    other, banner = await _banner(edge.submission, proxy_v2("192.0.2.2"))
    assert banner.startswith("220")  # the balancer's other clients still get in
    for session in [*(s for s, _ in held), refused, other]:
        await session.close()


async def test_total_connections_are_limited_on_both_ports(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(smtp_max_connections=3)
    held = [await _banner(edge.submission) for _ in range(3)]
    raw, banner = await _banner(edge.submission)
    assert banner.startswith("421 4.7.0")
    await raw.close()
    tls = await RawSmtp.connect(edge.implicit, tls=edge.client_tls)
    assert (await tls.reply()).startswith("421 4.7.0")
    await tls.close()
    for session, _ in held:
        await session.close()


async def test_a_session_sending_commands_without_a_message_is_closed(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8", smtp_junk_command_limit=6)
    raw, _ = await _banner(edge.submission)
    for command in ("EHLO client.test", "MAIL FROM:<app@example.test>", "RCPT TO:<user@dest.test>"):
        assert (await raw.command(command)).startswith("250")
    assert (await raw.command("DATA")).startswith("354")
    await raw.send(MESSAGE + b".\r\n")
    assert (await raw.reply()).startswith("250 2.0.0")  # a message: the count starts again
    assert (await raw.command("HELP DATA")).startswith("250 2.0.0 Syntax: DATA")
    for _ in range(5):
        assert (await raw.command("NOOP")).startswith("250")
    assert (await raw.command("NOOP")).startswith("421 4.7.0")
    assert await _closed(raw)
    await raw.close()


# -- a credential revoked during its session ---------------------------------------------------


async def test_a_credential_revoked_mid_session_is_refused_permanently(edge: Edge) -> None:
    client = edge.client()
    await client.connect()
    await client.starttls()
    await client.login(edge.tenant.username, edge.tenant.password)
    await client.mail("app@example.test")
    await client.rcpt("user@dest.test")
    credential_id = await edge.pool.fetchval(
        "SELECT id FROM smtp_credentials WHERE username = $1", edge.tenant.username
    )
    assert await credentials.delete_smtp_credential(edge.pool, credential_id)
    with pytest.raises(aiosmtplib.SMTPDataError) as at_data:
        await client.data(MESSAGE)
    assert (at_data.value.code, at_data.value.message[:5]) == (535, "5.7.8")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as at_mail:
        await client.mail("app@example.test")
    assert (at_mail.value.code, at_mail.value.message[:5]) == (535, "5.7.8")
    await client.quit()
    assert await edge.stored_count() == 0


async def test_a_credential_revoked_between_transactions_stores_nothing_more(edge: Edge) -> None:
    """MAIL may still pass on what AUTH found a moment ago; the insert itself refuses."""
    client = edge.client()
    await client.connect()
    await client.starttls()
    await client.login(edge.tenant.username, edge.tenant.password)
    await client.sendmail("app@example.test", ["user@dest.test"], MESSAGE)
    credential_id = await edge.pool.fetchval(
        "SELECT id FROM smtp_credentials WHERE username = $1", edge.tenant.username
    )
    assert await credentials.delete_smtp_credential(edge.pool, credential_id)
    with pytest.raises((aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError)) as refused:
        await client.sendmail("app@example.test", ["user@dest.test"], MESSAGE)
    assert isinstance(refused.value, aiosmtplib.SMTPResponseException)
    assert (refused.value.code, refused.value.message[:5]) == (535, "5.7.8")
    await client.quit()
    assert await edge.stored_count() == 1


# -- certificate renewal -----------------------------------------------------------------------


def _peer_certificate(client: aiosmtplib.SMTP) -> bytes:
    assert client.transport is not None
    tls: ssl.SSLObject = client.transport.get_extra_info("ssl_object")
    certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


async def test_a_renewed_certificate_is_used_by_new_handshakes_and_open_sessions_continue(
    edge_factory: EdgeFactory, ca: trustme.CA
) -> None:
    edge = await edge_factory(tls_reload_seconds=0.1)
    open_session = edge.client()
    await open_session.connect()
    await open_session.starttls()
    await open_session.login(edge.tenant.username, edge.tenant.password)
    old = _peer_certificate(open_session)

    renewed = ca.issue_cert(HOSTNAME, "127.0.0.1")
    assert edge.settings.tls_cert is not None and edge.settings.tls_key is not None
    renewed.private_key_and_cert_chain_pem.write_to_path(str(edge.settings.tls_cert))
    renewed.private_key_pem.write_to_path(str(edge.settings.tls_key))
    new = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())

    async def served(implicit: bool) -> bytes:
        client = edge.client(implicit=implicit)
        await client.connect()
        if not implicit:
            await client.starttls()
        certificate = _peer_certificate(client)
        await client.quit()
        return certificate

    async def renewed_on_both_ports() -> bool:
        return [await served(False), await served(True)] == [new, new]

    await wait_until(renewed_on_both_ports, bound=10, interval=0.1)
    assert old != await served(False)
    await open_session.sendmail("app@example.test", ["user@dest.test"], MESSAGE)  # not dropped
    await open_session.quit()
    assert await edge.stored_count() == 1


# -- DATA ----------------------------------------------------------------------------------------


async def test_a_line_over_the_limit_in_data_is_refused_after_the_final_dot(
    edge_factory: EdgeFactory,
) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8")
    raw, _ = await _banner(edge.submission)
    for command in ("EHLO client.test", "MAIL FROM:<app@example.test>", "RCPT TO:<user@dest.test>"):
        assert (await raw.command(command)).startswith("250")
    assert (await raw.command("DATA")).startswith("354")
    # A line of 5,000 bytes (the limit is 1,000): read to the final dot, then refused.
    await raw.send(MESSAGE + b"y" * 5000 + b"\r\nafter\r\n.\r\n")
    assert (await raw.reply()).startswith("500 5.5.2")
    assert (await raw.command("NOOP")).startswith("250")  # the session goes on, in step
    await raw.close()
    assert await edge.stored_count() == 0
