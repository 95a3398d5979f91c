"""The pure parts of PIPELINING: reading several replies off one buffer, and the DATA form."""

from __future__ import annotations

import random
import re

import aiosmtplib
import pytest

from remails_sender_node.pipelining import MAX_REPLY_BYTES, message_data, parse_replies


def test_several_replies_in_one_buffer_come_out_in_order_and_a_partial_one_stays() -> None:
    buffer = bytearray(b"250 2.1.0 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go on\r\n452 4.")
    replies = parse_replies(buffer)
    assert [(r.code, r.message) for r in replies] == [
        (250, "2.1.0 Ok"),
        (550, "5.1.1 no such\n5.1.1 user"),
        (354, "go on"),
    ]
    assert buffer == bytearray(b"452 4.")
    buffer += b"5.3 full\r\n"
    assert [(r.code, r.message) for r in parse_replies(buffer)] == [(452, "4.5.3 full")]
    assert buffer == bytearray()


def test_a_continuation_waits_for_its_last_line() -> None:
    buffer = bytearray(b"250-first\r\n")
    assert parse_replies(buffer) == [] and buffer == bytearray(b"250-first\r\n")


def test_a_bare_code_line_is_a_reply() -> None:
    assert [(r.code, r.message) for r in parse_replies(bytearray(b"250\r\n"))] == [(250, "")]


@pytest.mark.parametrize("line", [b"hello\r\n", b"25 x\r\n", b"250x\r\n"])
def test_a_line_that_is_not_a_reply_is_an_error(line: bytes) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException):
        parse_replies(bytearray(line))


def test_an_endless_reply_is_refused() -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException):
        parse_replies(bytearray(b"250-" + b"x" * MAX_REPLY_BYTES))


def test_message_data_doubles_leading_dots_ends_lines_and_adds_the_final_dot() -> None:
    assert message_data(b"a\r\n.b\r\n..c\nd") == b"a\r\n..b\r\n...c\r\nd\r\n.\r\n"
    assert message_data(b".\r\n") == b"..\r\n.\r\n"


def test_message_data_is_the_rfc_5321_transparency_of_any_line_endings() -> None:
    # The reference: every CR, LF or CRLF one CRLF, then a dot doubled at the start of each line.
    def reference(message: bytes) -> bytes:
        lines = re.sub(rb"\r\n|\n|\r", b"\n", message).split(b"\n")
        lines.pop()  # after the last line end, or the unended last line (which gets one)
        if not message.endswith((b"\n", b"\r")):
            lines.append(re.split(rb"\r\n|\n|\r", message)[-1])
        return (
            b"".join(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines)
            + b".\r\n"
        )

    rng = random.Random(5321)
    for _ in range(2000):
        message = bytes(rng.choice(b".\r\na ") for _ in range(rng.randrange(0, 12)))
        assert message_data(message) == reference(message), message
