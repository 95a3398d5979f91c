"""Header-From alignment: every From field counts, in any RFC 5322 form, anywhere in the block."""

from __future__ import annotations

import pytest

from remails.sending_policy import from_addresses, header_fields
from remails_functions.validate import decide

OWN = ["own.test"]


def _judge(headers: bytes) -> str | None:
    return decide(headers, "bounce@own.test", OWN, ["x@dest.test"], set()).reject_reason


def test_one_aligned_from_passes_in_any_case_and_with_the_obsolete_space() -> None:
    for line in (
        b"From: App <app@own.test>",
        b"FROM: app@own.test",
        b"from :app@own.test",
        b"From\t : a@own.test",
    ):
        assert _judge(line + b"\r\nSubject: hi") is None, line


@pytest.mark.parametrize(
    "headers",
    [
        b"From: app@own.test\r\nSubject: hi\r\nFrom: ceo@other.test",
        b"From: app@own.test\r\nFrom : ceo@other.test",
        b"From: app@own.test\r\nfrom\t:ceo@other.test",
        b"From: app@own.test\r\n" + b"X-Pad: " + b"a" * 998 + b"\r\n" * 1 + b"FROM: ceo@other.test",
    ],
)
def test_a_second_from_anywhere_in_any_form_is_refused(headers: bytes) -> None:
    assert _judge(headers) == "message has more than one From header"


def test_a_second_from_after_more_than_256_kib_of_headers_is_refused() -> None:
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 900) for i in range(400))  # ~360 KiB
    headers = b"From: app@own.test\r\n" + padding + b"From: ceo@other.test"
    assert len(headers) > 256 * 1024
    assert _judge(headers) == "message has more than one From header"


def test_an_obsolete_from_alone_is_judged_like_any_other() -> None:
    assert "does not align" in str(_judge(b"Subject: hi\r\nFrom : ceo@other.test"))


@pytest.mark.parametrize(
    "value",
    [
        b"a@own.test <ceo@other.test>",  # readers disagree on which address this is
        b"app@own.test, ceo@other.test",
        b"ceo@other.test (app@own.test)",
        b"undisclosed:;",
        b"app@own.test@other.test",
    ],
)
def test_a_from_that_readers_could_take_for_another_domain_is_refused(value: bytes) -> None:
    assert _judge(b"From: " + value) is not None


def test_folded_values_and_lines_that_are_not_fields() -> None:
    fields = header_fields(b"Subject: a\r\n b\r\nFrom :\r\n\tapp@own.test")
    assert fields == [("subject", b" a b"), ("from", b"\tapp@own.test")]
    assert _judge(b"Subject: hi\r\nFrom:\r\n app@own.test") is None
    assert header_fields(b"From app@own.test Mon Jan  1 00:00:00 2024\r\nFrom: a@own.test") is None
    assert from_addresses(b" continued\r\nFrom: a@own.test") == (
        "malformed header block: a line is not a header field"
    )
    assert _judge(b"Subject: hi") == "message has no From header"
