"""normalise_line_endings skips the regex for CRLF-only data, with the regex's result."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remails import message_headers
from remails.message_headers import _BARE, normalise_line_endings

EDGE_CASES = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"a\r\nb\r\n",
    b"a\r\nb\r",  # bare CR at the end
    b"\na\r\n",  # bare LF at the start
    b"\r",
    b"\n",
    b"\r\r\n",
    b"\n\r",
    b"\r\n\n",
    b"\r\n\r",
    b"a\r",
    b"\na",
    b"a\rb\nc",
    b"a\nb\rc\r\nd",
    (b"x" * 70 + b"\r\n") * 57,  # a 4 KB CRLF-only message
    (b"x" * 70 + b"\r\n") * 57 + b"\n",
    b"\n" + (b"x" * 70 + b"\r\n") * 57,
    (b"x" * 70 + b"\r\n") * 28 + b"\r" + (b"x" * 70 + b"\r\n") * 28,
]


def _same_as_regex(data: bytes) -> None:
    assert normalise_line_endings(data) == _BARE.sub(b"\r\n", data), data


def test_edge_cases_match_the_regex() -> None:
    for data in EDGE_CASES:
        _same_as_regex(data)


class _NoRegex:
    def sub(self, repl: bytes, data: bytes) -> bytes:
        raise AssertionError("the regex ran on CRLF-only data")


def test_crlf_only_data_is_returned_without_the_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    # re.sub already returns its input when nothing matched: only its absence shows the fast path.
    monkeypatch.setattr(message_headers, "_BARE", _NoRegex())
    for data in (b"", b"abc", b"a\r\nb\r\n", (b"x" * 70 + b"\r\n") * 57):
        assert normalise_line_endings(data) is data


def test_seeded_random_inputs_match_the_regex() -> None:
    rng = random.Random(5322)
    for _ in range(20_000):
        pieces = rng.choices([b"a", b"\r", b"\n", b"\r\n"], k=rng.randrange(12))
        _same_as_regex(b"".join(pieces))


@settings(max_examples=1000, database=None, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n"]), max_size=40).map(b"".join))
def test_any_mix_of_line_endings_matches_the_regex(data: bytes) -> None:
    _same_as_regex(data)
