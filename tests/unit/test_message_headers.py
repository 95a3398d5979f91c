from datetime import UTC, datetime

from remails.message_headers import (
    has_bare_line_ending,
    header_value,
    normalise_line_endings,
    prepend_headers,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_bare_line_endings_are_found() -> None:
    assert not has_bare_line_ending(b"a\r\nb\r\n")
    assert has_bare_line_ending(b"a\nb\r\n")
    assert has_bare_line_ending(b"a\rb\r\n")
    assert has_bare_line_ending(b"a\r\n.\n")


def test_normalise_line_endings() -> None:
    assert normalise_line_endings(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"


def test_missing_message_id_and_date_are_added() -> None:
    raw, message_id = prepend_headers(
        b"Subject: x\r\n\r\nbody\r\n", hostname="mx.test", message_id="abc", now=NOW
    )
    assert message_id == "<abc@mx.test>"
    assert raw.startswith(b"Message-ID: <abc@mx.test>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n")
    assert raw.endswith(b"Subject: x\r\n\r\nbody\r\n")


def test_existing_headers_are_kept() -> None:
    original = b"message-id: <own@app.test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nb\r\n"
    raw, message_id = prepend_headers(original, hostname="mx.test", message_id="abc", now=NOW)
    assert raw == original and message_id == "<own@app.test>"


def test_header_value_unfolds_and_ignores_the_body() -> None:
    raw = b"Subject: a\r\n long\r\n\r\nMessage-ID: <in-body@x>\r\n"
    assert header_value(raw, "subject") == "a long"
    assert header_value(raw, "Message-ID") is None
