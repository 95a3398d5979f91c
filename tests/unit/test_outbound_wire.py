"""Pure decisions of the outbound wire: bare addresses and their A-label forms, the plan of one
transaction against an MX's EHLO keywords, the 8BITMIME downgrade, trace-header syntax, and an
exception in one destination's delivery becoming that destination's 4.3.0."""

from __future__ import annotations

import asyncio
import base64
import quopri
from email import message_from_bytes
from email.policy import default

import pytest

from remails.addresses import parse_mailbox
from remails.db.pipeline import AttemptRecord
from remails.message_headers import longest_line, trace_domain
from remails_sender_node.seven_bit import to_seven_bit
from remails_sender_node.smtp_client import contained, failed_attempt
from remails_sender_node.transaction_plan import mail_options, plan_transaction

MODERN = {"size", "8bitmime", "smtputf8", "starttls", "pipelining"}
SEVEN_BIT = {"size", "starttls"}


@pytest.mark.parametrize(
    "text",
    [
        "a@b.test",
        "jörg@exämple.test",
        "用户@例子.测试",
        '"a b"@x.test',
        "first.last+tag@sub.example.com",
    ],
)
def test_one_bare_address_is_accepted(text: str) -> None:
    mailbox = parse_mailbox(text)
    assert mailbox is not None and mailbox.text == text


@pytest.mark.parametrize(
    "text",
    [
        "a b@x.test",
        "ceo@other.test,app@own.test",
        "ceo@other.test>app@own.test",
        "<a@x.test>",
        "A <a@x.test>",
        "a@x.test (c)",
        "a@localhost",
        "a@[127.0.0.1]",
        "a..b@x.test",
        "a@x_y.test",
        "a\udcff@x.test",  # an undecodable byte as aiosmtpd hands it over
        "a\u00a0@x.test",
        "x" * 65 + "@x.test",
        "",
    ],
)
def test_anything_but_one_bare_address_is_refused(text: str) -> None:
    assert parse_mailbox(text) is None


def test_wire_forms() -> None:
    idn = parse_mailbox("user@Exämple.test")
    assert idn is not None and not idn.needs_smtputf8
    assert idn.wire(smtputf8=False) == "user@xn--exmple-cua.test"
    utf8 = parse_mailbox("jörg@exämple.test")
    assert utf8 is not None and utf8.needs_smtputf8 and utf8.wire(smtputf8=True) == "jörg@exämple.test"


def test_plan_utf8_mailbox_to_a_modern_mx_uses_smtputf8_and_8bitmime() -> None:
    plan = plan_transaction(
        "app@example.test", ["jörg@utf8.test"], eight_bit=True, utf8_headers=False, offers=MODERN
    )
    assert plan.recipients == {"jörg@utf8.test": "jörg@utf8.test"} and not plan.refused
    assert mail_options(plan, 123, MODERN) == ["SIZE=123", "BODY=8BITMIME", "SMTPUTF8"]
    assert not plan.seven_bit


def test_plan_utf8_mailbox_to_an_old_mx_refuses_only_that_recipient() -> None:
    plan = plan_transaction(
        "app@example.test",
        ["jörg@seven.test", "plain@seven.test", "user@exämple.test"],
        eight_bit=True,
        utf8_headers=False,
        offers=SEVEN_BIT,
    )
    assert plan.refused == {
        "jörg@seven.test": (None, "5.6.7", "a UTF-8 address needs SMTPUTF8, which this MX does not offer")
    }
    assert plan.recipients == {
        "plain@seven.test": "plain@seven.test",
        "user@exämple.test": "user@xn--exmple-cua.test",
    }
    assert plan.seven_bit and not plan.smtputf8
    assert mail_options(plan, 9, SEVEN_BIT) == ["SIZE=9"]


def test_plan_utf8_headers_to_an_old_mx_refuse_every_recipient() -> None:
    plan = plan_transaction(
        "app@example.test",
        ["a@seven.test", "b@seven.test"],
        eight_bit=True,
        utf8_headers=True,
        offers=SEVEN_BIT,
    )
    assert not plan.recipients and {r[1] for r in plan.refused.values()} == {"5.6.7"}


def test_plan_ascii_mail_to_a_modern_mx_declares_nothing() -> None:
    plan = plan_transaction("a@x.test", ["b@y.test"], eight_bit=False, utf8_headers=False, offers=MODERN)
    assert mail_options(plan, 5, MODERN) == ["SIZE=5"]


def test_plan_refuses_an_unsendable_sender_for_everyone() -> None:
    plan = plan_transaction("a b@x.test", ["b@y.test"], eight_bit=False, utf8_headers=False, offers=MODERN)
    assert not plan.recipients and plan.refused["b@y.test"][1] == "5.1.7"


MESSAGE = (
    b"From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="BB"\r\n\r\n'
    b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xc3\xa9 = ok  \r\n" + b"\xc3\xa9" * 500 + b"\r\n"
    b"--BB\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n"
    b"--BB\r\nContent-Type: application/octet-stream\r\n\r\n\xff\xfe\x00\r\n--BB--\r\n"
)


def test_seven_bit_reencodes_only_the_8bit_parts() -> None:
    out = to_seven_bit(MESSAGE)
    assert out.isascii() and longest_line(out) <= 76
    assert out.startswith(MESSAGE[: MESSAGE.index(b"--BB")])  # headers and preamble untouched
    assert b"--BB\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n" in out  # 7-bit part as written
    parts = [p for p in message_from_bytes(out, policy=default).walk() if not p.is_multipart()]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", None, "base64"]
    assert parts[0].get_payload(decode=True) == ("café = ok  \r\n" + "é" * 500).encode()
    assert parts[2].get_payload(decode=True) == b"\xff\xfe\x00"


def test_seven_bit_single_part_and_clean_input() -> None:
    single = b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n"
    out = to_seven_bit(single)
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"Content-Transfer-Encoding: quoted-printable" in head
    assert quopri.decodestring(body) == b"caf\xc3\xa9\r\n"
    clean = b"Subject: x\r\n\r\nhello\r\n"
    assert to_seven_bit(clean) == clean
    binary = b"Content-Type: image/png\r\n\r\n\x89PNG\r\n"
    assert base64.b64decode(to_seven_bit(binary).split(b"\r\n\r\n", 1)[1]) == b"\x89PNG\r\n"


@pytest.mark.parametrize(
    ("ehlo", "reduced"),
    [
        ("odd host; x=(y", "unknown"),
        ("mail.Example.com", "mail.example.com"),
        ("[127.0.0.1]", "[127.0.0.1]"),
        ("[IPv6:::1]", "[IPv6:::1]"),
        ("[1.2.3]", "unknown"),
        ("exämple.test", "xn--exmple-cua.test"),
        ("a(b).test", "unknown"),
        (None, "unknown"),
    ],
)
def test_trace_domain(ehlo: str | None, reduced: str) -> None:
    assert trace_domain(ehlo) == reduced


def _record(domain: str) -> AttemptRecord:
    return failed_attempt(domain, [f"a@{domain}"], "127.0.0.2", "2.0.0", "ok", 0.0)


async def _explodes() -> AttemptRecord:
    raise UnicodeEncodeError("ascii", "jörg", 1, 2, "ordinal not in range(128)")


async def _fine() -> AttemptRecord:
    await asyncio.sleep(0)
    return _record("good.test")


async def test_an_exception_in_one_destination_is_its_4_3_0_and_the_others_go_on() -> None:
    bad, good = await asyncio.gather(
        contained(_explodes(), "bad.test", ["a@bad.test"], "127.0.0.2"),
        contained(_fine(), "good.test", ["a@good.test"], "127.0.0.2"),
    )
    assert good == _record("good.test") or (good.domain == "good.test" and good.enhanced == "2.0.0")
    assert bad.domain == "bad.test" and bad.enhanced == "4.3.0" and bad.code is None
    assert bad.replies == {"a@bad.test": (None, "4.3.0", bad.text)}
    assert bad.text.startswith("local error while delivering: UnicodeEncodeError: ")
