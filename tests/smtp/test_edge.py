"""The SMTP edge over real sockets: TLS, AUTH, envelope policy, smuggling, storage, outages."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import subprocess
from email import message_from_bytes
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from remails.db import orgs
from tests.smtp.conftest import Edge, EdgeFactory, proxy_v2
from tests.support.db import one_row
from tests.support.postgres import PostgresServer
from tests.support.rawsmtp import RawSmtp
from tests.support.wait import wait_until

MESSAGE = b"From: app@example.test\r\nTo: user@dest.test\r\nSubject: code\r\n\r\nYour code is 123456.\r\n"


async def _login(edge: Edge, implicit: bool = False) -> aiosmtplib.SMTP:
    client = edge.client(implicit=implicit)
    await client.connect()
    if not implicit:
        await client.starttls()
    await client.login(edge.tenant.username, edge.tenant.password)
    return client


async def _send(
    client: aiosmtplib.SMTP,
    sender: str = "app@example.test",
    rcpts: list[str] | None = None,
    data: bytes = MESSAGE,
) -> tuple[int, str]:
    await client.mail(sender)
    for rcpt in rcpts or ["user@dest.test"]:
        await client.rcpt(rcpt)
    response = await client.data(data)
    return response.code, response.message


async def test_ehlo_advertises_extensions_and_auth_only_after_tls(edge: Edge) -> None:
    client = edge.client()
    await client.connect()
    await client.ehlo()
    before = client.esmtp_extensions
    for ext in ("size", "8bitmime", "smtputf8", "enhancedstatuscodes", "pipelining", "starttls"):
        assert ext in before, ext
    assert before["size"] == str(edge.settings.smtp_max_message_size)
    assert "auth" not in before
    await client.starttls()
    await client.ehlo()
    assert "starttls" not in client.esmtp_extensions
    assert set(client.esmtp_extensions["auth"].split()) >= {"PLAIN", "LOGIN"}
    await client.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_auth_and_submit(edge: Edge, mechanism: str) -> None:
    client = edge.client()
    await client.connect()
    await client.starttls()
    await client.ehlo()
    auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    response = await auth(edge.tenant.username, edge.tenant.password)
    assert response.code == 235 and response.message.startswith("2.7.0")
    code, text = await _send(client)
    await client.quit()
    assert code == 250
    assert text.startswith("2.0.0 Ok: queued as ")
    message_id = text.rsplit(" ", 1)[1]
    row = await one_row(
        edge.pool, "SELECT status, mail_from, project_id FROM messages WHERE id = $1::uuid", message_id
    )
    assert row["status"] == "received" and row["mail_from"] == "app@example.test"
    assert row["project_id"] == edge.tenant.project_id
    [event] = edge.publisher.of_type("message.received")
    assert event["msgid"] == message_id


async def test_implicit_tls_submission(edge: Edge) -> None:
    client = await _login(edge, implicit=True)
    code, _ = await _send(client)
    await client.quit()
    assert code == 250
    assert await edge.stored_count() == 1


async def test_wrong_password_is_535_and_the_password_is_not_logged(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = edge.client()
    await client.connect()
    await client.starttls()
    wrong = edge.tenant.password + "x"
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await client.login(edge.tenant.username, wrong)
    assert info.value.code == 535 and "5.7.8" in info.value.message
    await client.quit()
    logs = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for secret in (wrong, edge.tenant.password):
        assert secret not in logs
        assert base64.b64encode(secret.encode()).decode() not in logs
    assert edge.tenant.username in logs  # the failure is logged, by username


async def test_auth_before_starttls_is_refused(edge: Edge) -> None:
    raw = await RawSmtp.connect(edge.submission)
    await raw.reply()
    await raw.command("EHLO client.test")
    token = base64.b64encode(f"\0{edge.tenant.username}\0{edge.tenant.password}".encode()).decode()
    assert (await raw.command(f"AUTH PLAIN {token}")).startswith("538 5.7.11")
    await raw.close()


async def test_unauthenticated_relay_is_refused(edge: Edge) -> None:
    client = edge.client()
    await client.connect()
    await client.starttls()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await client.mail("app@example.test")
    assert info.value.code == 530 and info.value.message.startswith("5.7.0")
    await client.quit()
    assert await edge.stored_count() == 0


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("app@example.test", True),
        ("app@mail.example.test", True),
        ("app@evilexample.test", False),
        ("app@example.test.evil", False),
        ("app@other.test", False),
    ],
)
async def test_sender_domain_must_be_a_verified_domain_of_the_project(
    edge: Edge, sender: str, accepted: bool
) -> None:
    client = await _login(edge)
    if accepted:
        assert (await client.mail(sender)).code == 250
    else:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await client.mail(sender)
        assert info.value.code == 553 and info.value.message.startswith("5.7.1")
    await client.quit()


async def _wait_refused_at_mail(client: aiosmtplib.SMTP, expected: tuple[int, str]) -> None:
    """MAIL until it is refused as expected (AssertionError after 5 s): the edge keeps a
    project's facts up to a second."""

    async def refused() -> bool:
        try:
            await client.mail("app@example.test")
        except aiosmtplib.SMTPSenderRefused as exc:
            return (exc.code, exc.message[:5]) == expected
        await client.rset()
        return False

    await wait_until(refused, bound=5, interval=0.2)


async def test_blocked_organization_and_used_up_quota(edge: Edge) -> None:
    client = await _login(edge)
    await orgs.set_block_status(edge.pool, edge.tenant.org_id, "no_sending")
    await _wait_refused_at_mail(client, (554, "5.7.1"))
    await orgs.set_block_status(edge.pool, edge.tenant.org_id, "not_blocked")
    await edge.pool.execute(
        "UPDATE organizations SET quota_used = monthly_quota WHERE id = $1", edge.tenant.org_id
    )
    await _wait_refused_at_mail(client, (452, "4.5.3"))
    await client.quit()


async def test_too_many_recipients(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(smtp_max_recipients=2)
    client = await _login(edge)
    await client.mail("app@example.test")
    await client.rcpt("a@dest.test")
    await client.rcpt("b@dest.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
        await client.rcpt("c@dest.test")
    assert (info.value.code, info.value.message[:5]) == (452, "4.5.3")
    await client.quit()


async def test_bare_lf_smuggling_is_refused_and_only_the_legitimate_message_stored(
    edge_factory: EdgeFactory,
) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8")
    raw = await RawSmtp.connect(edge.submission)
    await raw.reply()
    await raw.command("EHLO client.test")
    replies = []
    for separator in (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"):
        assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")
        assert (await raw.command("RCPT TO:<victim@dest.test>")).startswith("250")
        assert (await raw.command("DATA")).startswith("354")
        smuggled = (
            b"Subject: probe\r\n\r\nline1"
            + separator
            + b"MAIL FROM:<evil@example.test>\r\nRCPT TO:<other@dest.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
        await raw.send(smuggled)
        replies.append(await raw.reply())
    for reply in replies:
        assert reply.startswith("550 5.5.2"), reply
    assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")
    assert (await raw.command("RCPT TO:<user@dest.test>")).startswith("250")
    assert (await raw.command("DATA")).startswith("354")
    await raw.send(MESSAGE + b".\r\n")
    assert (await raw.reply()).startswith("250 2.0.0 Ok: queued as")
    await raw.command("QUIT")
    await raw.close()
    rows = await edge.pool.fetch("SELECT raw FROM messages")
    assert len(rows) == 1
    assert b"smuggled" not in rows[0]["raw"] and b"Your code is 123456." in rows[0]["raw"]


async def test_dot_unstuffing(edge: Edge) -> None:
    client = await _login(edge)
    code, _ = await _send(client, data=b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n")
    await client.quit()
    raw = await edge.pool.fetchval("SELECT raw FROM messages")
    assert code == 250
    assert raw.endswith(b"\r\n.leading dot\r\n..two\r\n")


async def test_oversize_is_refused(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(smtp_max_message_size=2048, trusted_cidr="127.0.0.0/8")
    big = MESSAGE + (b"x" * 70 + b"\r\n") * 60
    client = await _login(edge)
    with pytest.raises(aiosmtplib.SMTPResponseException) as info:  # refused at MAIL, from SIZE=
        await _send(client, data=big)
    assert (info.value.code, info.value.message[:5]) == (552, "5.3.4")
    await client.quit()
    raw = await RawSmtp.connect(edge.submission)  # a client that ignores SIZE: refused after DATA
    await raw.reply()
    await raw.command("EHLO client.test")
    await raw.command("MAIL FROM:<app@example.test>")
    await raw.command("RCPT TO:<user@dest.test>")
    await raw.command("DATA")
    await raw.send(big + b".\r\n")
    assert (await raw.reply()).startswith("552 5.3.4")
    await raw.close()
    assert await edge.stored_count() == 0


async def test_rset_and_a_second_transaction_on_one_connection(edge: Edge) -> None:
    client = await _login(edge)
    await client.mail("app@example.test")
    await client.rcpt("first@dest.test")
    assert (await client.rset()).code == 250
    code1, text1 = await _send(client, rcpts=["a@dest.test"])
    code2, text2 = await _send(client, rcpts=["b@dest.test"])
    await client.quit()
    assert code1 == code2 == 250 and text1 != text2
    rows = await edge.pool.fetch("SELECT address FROM recipients ORDER BY id")
    assert [r["address"] for r in rows] == ["a@dest.test", "b@dest.test"]


async def test_message_id_and_date_are_added_when_missing(edge: Edge) -> None:
    client = await _login(edge)
    _, text = await _send(client)
    await client.quit()
    message_id = text.rsplit(" ", 1)[1]
    row = await one_row(edge.pool, "SELECT raw, message_id_header FROM messages")
    parsed = message_from_bytes(row["raw"])
    assert parsed["Message-ID"] == f"<{message_id}@mx.remails.test>" == row["message_id_header"]
    assert parsed["Date"]
    assert parsed["Received"].startswith("from client.test by mx.remails.test with ESMTPSA")


async def test_a_database_outage_gives_451_and_stores_nothing(edge: Edge, postgres: PostgresServer) -> None:
    client = await _login(edge)
    await client.mail("app@example.test")
    await client.rcpt("user@dest.test")
    database = await edge.pool.fetchval("SELECT current_database()")
    conn = await asyncpg.connect(postgres.base_dsn)
    try:
        await conn.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await client.data(MESSAGE)
        assert (info.value.code, info.value.message[:5]) == (451, "4.3.0")
        await conn.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    finally:
        await conn.close()
    await client.quit()
    assert await edge.stored_count() == 0


async def test_every_250_is_exactly_one_stored_message(edge: Edge, dsn: str) -> None:
    """A 250 is sent only after the message is committed: at the instant the client reads it,
    another connection already sees the row — for every message; and while the commit is held
    up, no 250 arrives."""
    observer = await asyncpg.connect(dsn)
    try:

        async def visible(message_id: str) -> bool:
            return bool(
                await observer.fetchval("SELECT count(*) FROM messages WHERE id = $1::uuid", message_id)
            )

        accepted = 0
        for round_ in range(3):
            client = await _login(edge)
            for i in range(5):
                rcpts = [f"u{round_}{i}@dest.test"]
                sender = "app@example.test" if i != 2 else "app@foreign.test"
                try:
                    code, text = await _send(client, sender=sender, rcpts=rcpts)
                except aiosmtplib.SMTPSenderRefused:
                    await client.rset()
                    continue
                assert code == 250
                assert await visible(text.rsplit(" ", 1)[1]), "250 before the row was committed"
                accepted += 1
            await client.quit()
        assert accepted == 12
        assert await edge.stored_count() == accepted

        # Hold the insert up with a lock: the client must still be waiting for its reply.
        client = await _login(edge)
        await client.mail("app@example.test")
        await client.rcpt("held@dest.test")
        locker = await asyncpg.connect(dsn)
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
            reply = asyncio.create_task(client.data(MESSAGE))

            async def insert_waits() -> bool:
                return bool(await observer.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

            await wait_until(insert_waits)
            assert not reply.done(), "250 while the message was not committed"
            await transaction.commit()
        finally:
            await locker.close()
        response = await reply
        assert response.code == 250 and await visible(response.message.rsplit(" ", 1)[1])
        await client.quit()
    finally:
        await observer.close()


async def test_failed_auth_is_throttled_per_client(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(auth_max_failures=3)
    for _ in range(3):
        client = edge.client()
        await client.connect()
        await client.starttls()
        await client.ehlo()
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
            await client.auth_plain(edge.tenant.username, "wrong")
        assert info.value.code == 535
        await client.quit()
    raw = await RawSmtp.connect(edge.submission)
    await raw.reply()
    await raw.command("EHLO client.test")
    await raw.command("STARTTLS")
    tls_reader, tls_writer = raw.reader, raw.writer
    await tls_writer.start_tls(edge.client_tls, server_hostname="mx.remails.test")
    await raw.command("EHLO client.test")
    token = base64.b64encode(f"\0{edge.tenant.username}\0{edge.tenant.password}".encode()).decode()
    assert (await raw.command(f"AUTH PLAIN {token}")).startswith("454 4.7.0")
    assert await asyncio.wait_for(tls_reader.read(), 5) == b""  # and the connection is closed
    await raw.close()


async def test_trusted_network_submits_without_auth(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8")
    client = edge.client()
    await client.connect()
    code, _ = await _send(client)
    await client.quit()
    assert code == 250
    assert await edge.pool.fetchval("SELECT project_id FROM messages") == edge.tenant.project_id


async def test_proxy_protocol_v2_gives_the_real_client_ip(edge_factory: EdgeFactory) -> None:
    edge = await edge_factory(
        proxy_protocol=True, proxy_trusted_networks="127.0.0.0/8", trusted_cidr="10.9.8.0/24"
    )
    outcomes = {}
    for src in ("10.9.8.7", "192.0.2.1"):
        raw = await RawSmtp.connect(edge.submission, prefix=proxy_v2(src))
        assert (await raw.reply()).startswith("220 mx.remails.test")
        await raw.command("EHLO client.test")
        outcomes[src] = await raw.command("MAIL FROM:<app@example.test>")
        await raw.close()
    assert outcomes["10.9.8.7"].startswith("250")
    assert outcomes["192.0.2.1"].startswith("530 5.7.0")
    raw = await RawSmtp.connect(edge.submission)  # no PROXY header: dropped without a banner
    with pytest.raises(ConnectionError):
        await raw.reply()
    await raw.close()


async def test_graceful_shutdown_finishes_a_session_in_data(edge: Edge) -> None:
    client = await _login(edge)
    await client.mail("app@example.test")
    await client.rcpt("user@dest.test")
    await client.execute_command(b"DATA")
    stop = asyncio.create_task(edge.server.stop(grace=10))
    await asyncio.sleep(0)  # let stop() begin: listeners closed while the session is in DATA
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(*edge.submission), 2)
    transport: Any = client.transport
    transport.write(MESSAGE + b".\r\n")
    response = await client.protocol.read_response(timeout=10)  # type: ignore[union-attr]
    assert response.code == 250
    await stop
    assert await edge.stored_count() == 1


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by `make test`")
async def test_swaks_submits_with_starttls_and_auth(edge: Edge, tmp_path: object) -> None:
    host, port = edge.submission
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "swaks",
            "--server",
            host,
            "--port",
            str(port),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(edge.ca_path),
            "--tls-sni",
            "mx.remails.test",
            "--auth",
            "PLAIN",
            "--auth-user",
            edge.tenant.username,
            "--auth-password",
            edge.tenant.password,
            "--from",
            "app@example.test",
            "--to",
            "user@dest.test",
            "--helo",
            "client.test",
            "--header",
            "Subject: swaks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    assert await edge.stored_count() == 1
