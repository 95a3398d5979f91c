"""The chunked DATA reader gives what the line-by-line reader it replaced gave, wherever the
chunks are cut: content, problem, and the bytes after the final dot."""

from __future__ import annotations

import asyncio
import random

import pytest

from remails_smtp_edge.data_reader import LINE_TOO_LONG, TOO_MUCH_DATA, DataParser

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, the edge's reader limit


async def _by_lines(chunks: list[bytes], size_limit: int) -> tuple[bytes, str | None, bytes]:
    """The reference: the edge's former reader, `readuntil(CRLF)` on a StreamReader whose limit
    is the line limit."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    content = bytearray()
    size = 0
    problem: str | None = None
    in_long_line = False
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            await reader.read(exc.consumed)
            problem = problem or LINE_TOO_LONG
            content = bytearray()
            in_long_line = True
            continue
        if in_long_line:
            in_long_line = False
            continue
        if line == b".\r\n":
            return bytes(content), problem, await reader.read()
        size += len(line)
        if problem is not None:
            continue
        if size_limit and size > size_limit:
            problem = TOO_MUCH_DATA
            content = bytearray()
            continue
        content += line[1:] if line.startswith(b".") else line


def _by_chunks(chunks: list[bytes], size_limit: int) -> tuple[bytes, str | None, bytes]:
    parser = DataParser(size_limit, LINE_LIMIT)
    for i, chunk in enumerate(chunks):
        leftover = parser.feed(chunk)
        if leftover is not None:
            rest = bytes(leftover) + b"".join(chunks[i + 1 :])
            return bytes(parser.content), parser.problem, rest
    raise AssertionError("no final dot")


def _cuts(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 3, 5, 64, 1000, 1003, 4096, 65536])
        chunks.append(data[i : i + n])
        i += n
    return chunks


CASES = {
    "plain": b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    "empty": b".\r\nQUIT\r\n",
    "stuffed dots": b"..\r\n.a\r\n...\r\nb.\r\n.\r\n",
    "bare LF and CR stay": b"a\nb\rc\r\n.\n.\r\n.\r\n",
    "a line at the limit": b"x" * 1001 + b"\r\n.\r\n",
    "a line one over": b"ok\r\n" + b"x" * 1002 + b"\r\nafter\r\n.\r\nNEXT\r\n",
    "a very long line": b"y" * 5000 + b"\r\n.\r\n",
    "a long line ending in a dot": b"z" * 2000 + b".\r\n.\r\n",
    "a long line with CR before its end": b"w" * 1001 + b"\r" + b"\r\n.\r\n",
    "too big": b"0123456789\r\n" * 20 + b".\r\nMAIL FROM:<a@b.test>\r\n",
    "too big, then a long line": b"0123456789\r\n" * 20 + b"q" * 1500 + b"\r\n.\r\n",
    "a long line, then too big": b"q" * 1500 + b"\r\n" + b"0123456789\r\n" * 20 + b".\r\n",
    "a dot line that is not final": b"a\r\n.x\r\n. \r\n.\r\n",
}


@pytest.mark.parametrize("name", list(CASES))
async def test_chunked_reading_matches_the_line_reader_for_every_cut(name: str) -> None:
    data = CASES[name]
    rng = random.Random(name)
    for size_limit in (0, 100, 10_000):
        want = await _by_lines([data], size_limit)
        for _ in range(40):
            chunks = _cuts(data, rng)
            assert _by_chunks(chunks, size_limit) == want, (name, size_limit, [len(c) for c in chunks])
        single = [data[i : i + 1] for i in range(len(data))]
        assert _by_chunks(single, size_limit) == want


async def test_random_messages_read_the_same_in_chunks_as_by_lines() -> None:
    rng = random.Random(4552)
    pieces = [b"a", b".", b"\r\n", b"\r", b"\n", b"x" * 700, b"y" * 1001, b"\r\n.\r\n", b".."]
    for _ in range(300):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        data = body + b"\r\n.\r\nQUIT\r\n"
        size_limit = rng.choice([0, 50, 3000])
        want = await _by_lines([data], size_limit)
        assert _by_chunks(_cuts(data, rng), size_limit) == want, data


def test_what_the_reader_finds() -> None:
    parser = DataParser(0, LINE_LIMIT)
    assert parser.feed(b"..a\r\nb\r") is None
    leftover = parser.feed(b"\n.\r\nQUIT\r\n")
    assert leftover is not None and bytes(leftover) == b"QUIT\r\n"
    assert parser.content == b".a\r\nb\r\n" and parser.problem is None
