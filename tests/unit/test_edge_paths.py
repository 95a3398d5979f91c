"""The edge's own reading of MAIL/RCPT paths gives exactly what aiosmtpd's header-parser
reading gives, and leaves every other shape to it."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from remails_smtp_edge.paths import plain_path
from remails_smtp_edge.server import EdgeSMTP


def _read(protocol: SMTP, arg: str) -> object:
    """What `_getaddr` gives, or the exception it raises (the header parser has a few)."""
    try:
        return protocol._getaddr(arg)
    except Exception as exc:
        return type(exc)


def _aiosmtpd(arg: str) -> object:
    return _read(SMTP.__new__(SMTP), arg)


def _edge(arg: str) -> object:
    return _read(EdgeSMTP.__new__(EdgeSMTP), arg)


PLAIN = [
    "<app@example.test>",
    "<app@example.test> SIZE=4096",
    "<app@example.test>  BODY=8BITMIME SMTPUTF8 ",
    "<app@example.test>\tSIZE=1",
    "<first.last+tag@mail.example.test>",
    "<A@B.COM>",
    "<x@localhost>",
    "<#!$%&'*+/=^_`{|}~?-@host-1.test>",
]

ELSEWHERE = [
    "",
    "<>",
    "<> SIZE=1",
    "app@example.test",
    "<a..b@c.test>",
    "<.a@c.test>",
    "<a.@c.test>",
    "<a@b..test>",
    "<a@b.test.>",
    "<a b@c.test>",
    '<"a"@b.test>',
    '<"a b"@c.test>',
    "<a(comment)@b.test>",
    "<app@example.test> (comment) SIZE=1",
    "<app@example.test>x",
    "<app@example.test>>",
    "<app@example.test",
    "<@route:a@b.test>",
    "< a@b.test >",
    "<a@[192.0.2.1]>",
    "<a@b_c.test>",
    "<=?utf-8?q?abc?=@b.test>",
    "<a=?x?q?y?=@b.test>",
    "<pépé@exemple.test>",
    "<a@exemple\u00e9.test>",
    "<a@b.test>\u00a0SIZE=1",
]


@pytest.mark.parametrize("arg", PLAIN)
def test_plain_paths_are_read_without_the_header_parser_and_as_aiosmtpd_reads_them(arg: str) -> None:
    assert plain_path(arg) is not None
    assert _edge(arg) == _aiosmtpd(arg)


@pytest.mark.parametrize("arg", ELSEWHERE)
def test_every_other_shape_is_left_to_aiosmtpd(arg: str) -> None:
    assert plain_path(arg) is None
    assert _edge(arg) == _aiosmtpd(arg)


def test_random_arguments_read_the_same_as_aiosmtpd() -> None:
    """Strings near the plain shape (and far from it): whenever the edge reads one itself,
    it reads it as aiosmtpd does; otherwise aiosmtpd reads it."""
    rng = random.Random(5321)
    alphabet = [*'ab.@<>()"\\[]:; \t=?-_#é', "\u00a0", "SIZE=1", "x.test"]
    tails = ["", " SIZE=1", "  BODY=8BITMIME ", "\t(c)", " (c) SIZE=1", ">", "x", " \u00a0X", " "]
    plain_seen = 0
    for _ in range(10_000):
        if rng.random() < 0.6:
            local = "".join(rng.choice("abc.-+=?_") for _ in range(rng.randint(0, 4)))
            domain = "".join(rng.choice("abc.-_") for _ in range(rng.randint(0, 5)))
            arg = f"<{local}@{domain}>{rng.choice(tails)}"
        else:
            arg = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if plain_path(arg) is not None:
            plain_seen += 1
        assert _edge(arg) == _aiosmtpd(arg), arg
    assert plain_seen > 500  # the fast path itself was exercised
