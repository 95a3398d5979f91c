"""Delivery to a real Postfix as the receiving MX: SMTPUTF8, 8BITMIME downgrade, A-labels,
opportunistic TLS that falls back to cleartext, and one bad recipient that costs the others
nothing. Every message is read back from Postfix's maildir and its DKIM signature verified
with dkimpy against the loopback DNS.

One Postfix instance, three MXs (three smtpd listeners with their own settings):
  modern   127.0.0.30  smtputf8_enable = yes, 8BITMIME, STARTTLS
  sevenbit 127.0.0.31  8BITMIME and SMTPUTF8 discarded (smtpd_discard_ehlo_keywords)
  oldtls   127.0.0.32  STARTTLS with TLS 1.0 only: our client (TLS >= 1.2) cannot finish it
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default
from typing import Any

import aiosmtplib
import dkim
import dns.resolver
import pytest
import trustme

from remails.runtime import Runtime
from tests.e2e.conftest import World, message_status
from tests.factories import Tenant
from tests.support.db import one_row
from tests.support.postfix import Listener, PostfixMx
from tests.support.sink import free_port
from tests.support.wait import wait_until

MODERN, SEVEN_BIT, OLD_TLS = "127.0.0.30", "127.0.0.31", "127.0.0.32"
MAILBOXES = [
    "jörg@utf8.test",
    "plain@modern.test",
    "plain@seven.test",
    "user@xn--exmple-cua.test",  # exämple.test
    "user@oldtls.test",
]


@pytest.fixture(scope="module")
def postfix(ca: trustme.CA) -> Iterator[PostfixMx]:
    cert = ca.issue_cert("mx-modern.test", "mx-seven.test", "mx-oldtls.test")
    mx = PostfixMx(
        free_port(MODERN),
        MAILBOXES,
        [
            Listener("modern", MODERN),
            Listener("sevenbit", SEVEN_BIT, {"smtpd_discard_ehlo_keywords": "8bitmime, smtputf8"}),
            Listener(
                "oldtls",
                OLD_TLS,
                {
                    "smtpd_tls_protocols": ">=TLSv1, <=TLSv1",
                    "smtpd_tls_ciphers": "medium",
                    "tls_medium_cipherlist": "DEFAULT:@SECLEVEL=0",
                },
            ),
        ],
        cert.cert_chain_pems[0].bytes(),
        cert.private_key_pem.bytes(),
    )
    mx.start()
    yield mx
    mx.stop()


def _publish(world: World) -> None:
    for domain, name, ip in [
        ("utf8.test", "mx-modern.test", MODERN),
        ("modern.test", "mx-modern.test", MODERN),
        ("seven.test", "mx-seven.test", SEVEN_BIT),
        ("xn--exmple-cua.test", "mx-seven.test", SEVEN_BIT),
        ("oldtls.test", "mx-oldtls.test", OLD_TLS),
    ]:
        world.dns.zone.mx(domain, name)
        world.dns.zone.a(name, ip)


async def _setup(world: World, postfix: PostfixMx, **overrides: object) -> tuple[Runtime, Tenant]:
    _publish(world)
    runtime = await world.runtime(delivery_port=postfix.port, **overrides)
    return runtime, await world.tenant(runtime, "example.test")


async def _submit(runtime: Runtime, world: World, tenant: Tenant, rcpts: list[str], data: bytes) -> str:
    """Submit over SMTP (STARTTLS, AUTH), with SMTPUTF8 when an address needs it and
    BODY=8BITMIME when the bytes are 8-bit; the queued message id."""
    assert runtime.edge is not None
    host, port = runtime.edge.submission_address
    context = ssl.create_default_context()
    world.ca.configure_trust(context)
    client = aiosmtplib.SMTP(hostname=host, port=port, tls_context=context, start_tls=True, timeout=10)
    await client.connect()
    await client.login(tenant.username, tenant.password)
    utf8 = not all(r.isascii() for r in rcpts)
    options = (["SMTPUTF8"] if utf8 else []) + ([] if data.isascii() else ["BODY=8BITMIME"])
    encoding = "utf-8" if utf8 else "ascii"
    await client.mail(f"app@{tenant.domain}", options=options, encoding=encoding)
    for rcpt in rcpts:
        await client.rcpt(rcpt, encoding=encoding)
    response = await client.data(data)
    await client.quit()
    return response.message.rsplit(" ", 1)[1]


def _dns_txt(world: World):  # type: ignore[no-untyped-def]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


def _crlf(maildir_file: bytes) -> bytes:
    return maildir_file.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # maildir files use LF


async def _final(runtime: Runtime, message_id: str) -> str:
    assert runtime.db is not None
    pool = runtime.db.pool

    async def done() -> bool:
        return await message_status(pool, message_id) in ("delivered", "bounced", "failed")

    await wait_until(done, bound=30)
    return await message_status(pool, message_id)


async def test_utf8_mailbox_to_an_smtputf8_mx_goes_with_smtputf8_and_8bitmime(
    world: World, postfix: PostfixMx
) -> None:
    runtime, tenant = await _setup(world, postfix)
    message = (
        "From: App <app@example.test>\r\nTo: Jörg <jörg@utf8.test>\r\nSubject: Grüße\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nDein Café ist fertig.\r\n"
    ).encode()
    message_id = await _submit(runtime, world, tenant, ["jörg@utf8.test"], message)
    assert await _final(runtime, message_id) == "delivered"

    [got] = await postfix.wait_delivered("jörg@utf8.test")
    assert "Dein Café ist fertig.".encode() in got  # 8-bit, as written
    assert dkim.verify(_crlf(got), dnsfunc=_dns_txt(world))
    commands = postfix.commands("modern")
    sent = [c for c in commands if "MAIL FROM:<app@example.test>" in c]
    assert any("BODY=8BITMIME" in c and "SMTPUTF8" in c for c in sent), sent
    assert any("RCPT TO:<jörg@utf8.test>" in c for c in commands), commands


async def test_8bit_mail_to_an_mx_without_8bitmime_is_converted_before_signing(
    world: World, postfix: PostfixMx
) -> None:
    runtime, tenant = await _setup(world, postfix)
    body = "Prix : 12 € — très bien.\r\n" + "é" * 450 + "\r\n"
    message = (
        "From: app@example.test\r\nTo: plain@seven.test, user@xn--exmple-cua.test\r\nSubject: prix\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"\xff\xfe\x00binary\r\n--b1--\r\n"
    message_id = await _submit(runtime, world, tenant, ["plain@seven.test", "user@exämple.test"], message)
    assert await _final(runtime, message_id) == "delivered"

    for address in ("plain@seven.test", "user@xn--exmple-cua.test"):
        [got] = await postfix.wait_delivered(address)
        assert got.isascii(), address  # nothing 8-bit reached the 7-bit MX
        assert dkim.verify(_crlf(got), dnsfunc=_dns_txt(world))  # signed after the conversion
        parsed = message_from_bytes(got, policy=default)
        text, blob = [p for p in parsed.walk() if not p.is_multipart()]
        assert text["Content-Transfer-Encoding"] == "quoted-printable"
        assert text.get_content() == body.removesuffix("\r\n").replace("\r\n", "\n")  # CRLF: the delimiter's
        assert blob["Content-Transfer-Encoding"] == "base64"
        assert blob.get_payload(decode=True) == b"\xff\xfe\x00binary"
    commands = postfix.commands("sevenbit")
    # The IDN domain went out as its A-label, without SMTPUTF8, and without BODY=8BITMIME.
    assert any("RCPT TO:<user@xn--exmple-cua.test>" in c for c in commands), commands
    mail = [c for c in commands if "MAIL FROM:" in c]
    assert mail and not any("8BITMIME" in c or "SMTPUTF8" in c for c in mail), mail


async def test_utf8_mailbox_to_a_7bit_mx_bounces_5_6_7_and_the_other_gets_one_copy(
    world: World, postfix: PostfixMx
) -> None:
    runtime, tenant = await _setup(world, postfix)
    message = b"From: app@example.test\r\nTo: undisclosed-recipients:;\r\nSubject: hi\r\n\r\nhello\r\n"
    message_id = await _submit(runtime, world, tenant, ["jörg@seven.test", "plain@modern.test"], message)
    assert await _final(runtime, message_id) == "bounced"

    assert len(await postfix.wait_delivered("plain@modern.test")) == 1
    assert runtime.db is not None
    attempts = await runtime.db.pool.fetch(
        "SELECT domain, enhanced FROM attempts WHERE message_id = $1::uuid", message_id
    )
    assert sorted((a["domain"], a["enhanced"]) for a in attempts) == [
        ("modern.test", "2.0.0"),
        ("seven.test", "5.6.7"),
    ]
    shown = await _cli_show(world, message_id)
    assert shown["status"] == "bounced"
    fates = {r["address"]: (r["status"], r["last_enhanced"]) for r in shown["recipients"]}
    assert fates == {"jörg@seven.test": ("bounced", "5.6.7"), "plain@modern.test": ("delivered", "2.0.0")}


async def _cli_show(world: World, message_id: str) -> dict[str, Any]:
    settings = world.settings()
    env = {
        **os.environ,
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_DNS_SERVERS": world.dns.servers,
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "remails.cli", "message", "show", message_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    shown: dict[str, object] = json.loads(done.stdout)
    return shown


async def test_a_failed_starttls_handshake_is_retried_in_cleartext_on_the_same_mx(
    world: World, postfix: PostfixMx
) -> None:
    runtime, tenant = await _setup(world, postfix)
    message = b"From: app@example.test\r\nTo: user@oldtls.test\r\nSubject: hi\r\n\r\nhello\r\n"
    message_id = await _submit(runtime, world, tenant, ["user@oldtls.test"], message)
    assert await _final(runtime, message_id) == "delivered"

    [got] = await postfix.wait_delivered("user@oldtls.test")
    assert dkim.verify(_crlf(got), dnsfunc=_dns_txt(world))
    assert runtime.db is not None
    [attempt] = await runtime.db.pool.fetch(
        "SELECT mx_host, tls_version, code FROM attempts WHERE message_id = $1::uuid", message_id
    )
    assert attempt["mx_host"] == "mx-oldtls.test" and attempt["code"] == 250
    assert attempt["tls_version"].startswith("none, handshake failed: "), attempt["tls_version"]
    assert any("SSL_accept error" in line for line in postfix.log("oldtls"))  # the MX saw it fail
    [trace] = [line for line in got.decode().splitlines() if "by mx.postfix.test (Postfix) with" in line]
    assert " with ESMTP id " in trace, trace  # the delivery itself was in cleartext


async def test_with_verified_tls_required_a_failed_handshake_is_not_retried_in_cleartext(
    world: World, postfix: PostfixMx
) -> None:
    runtime, tenant = await _setup(world, postfix, require_verified_tls=True)
    message = b"From: app@example.test\r\nTo: user@oldtls.test\r\nSubject: hi\r\n\r\nsecret\r\n"
    before = len(postfix.delivered("user@oldtls.test"))
    message_id = await _submit(runtime, world, tenant, ["user@oldtls.test"], message)
    assert runtime.db is not None
    pool = runtime.db.pool

    async def tried() -> bool:
        return bool(
            await pool.fetchval("SELECT count(*) FROM attempts WHERE message_id = $1::uuid", message_id)
        )

    await wait_until(tried, bound=30)
    attempt = await one_row(
        pool, "SELECT enhanced, text FROM attempts WHERE message_id = $1::uuid", message_id
    )
    assert attempt["enhanced"] == "4.4.1" and "TLS failed" in attempt["text"], attempt
    assert len(postfix.delivered("user@oldtls.test")) == before
