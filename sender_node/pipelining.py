"""SMTP PIPELINING (RFC 2920) for the transaction: MAIL, every RCPT and DATA in one write,
their replies read in order, then the message and its reply.

Like Postfix's smtp(8), this saves a round trip per command and a write and a wake-up on both
sides. aiosmtplib's protocol parses one reply per waiting command and drops what arrives while
a parsed reply waits for pickup, so for these exchanges a reader of our own is set on the
transport and the client's protocol is handed back after.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from remails.message_headers import normalise_line_endings

__all__ = ["MAX_REPLY_BYTES", "exchange", "message_data", "parse_replies"]

MAX_REPLY_BYTES = 32 * 1024  # a reply (with its continuation lines) longer than this is refused


def parse_replies(buffer: bytearray) -> list[SMTPResponse]:
    """Take the complete replies off the front of `buffer` (an incomplete one stays). Raises
    SMTPResponseException for a line that is not a reply or a reply that is too long."""
    replies: list[SMTPResponse] = []
    while True:
        offset, lines, complete = 0, [], False
        while (end := buffer.find(b"\n", offset)) != -1:
            line = bytes(buffer[offset : end + 1])
            offset = end + 1
            if not line[:3].isdigit() or line[3:4] not in b" -\r\n":
                raise aiosmtplib.SMTPResponseException(-1, f"malformed reply line: {line[:80]!r}")
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                complete = True
                break
        if not complete:
            if len(buffer) > MAX_REPLY_BYTES:
                raise aiosmtplib.SMTPResponseException(-1, "reply too long")
            return replies
        code = int(buffer[:3])
        replies.append(SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape")))
        del buffer[:offset]


def message_data(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line endings, leading dots doubled, the final dot."""
    # The sender's messages are CRLF-only already: a check and bytes.replace instead of two
    # regex passes over the whole message.
    message = normalise_line_endings(message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")  # every line but the first starts after CRLF
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


class _Reader(asyncio.Protocol):
    """The transport's protocol during one exchange: collects the replies."""

    def __init__(self, client_protocol: asyncio.BaseProtocol) -> None:
        self._client_protocol = client_protocol
        self._buffer = bytearray()
        self._replies: list[SMTPResponse] = []
        self._failure: BaseException | None = None
        self._changed: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._replies += parse_replies(self._buffer)
        except aiosmtplib.SMTPResponseException as exc:
            self._failure = exc
        self._wake()

    def eof_received(self) -> bool:
        self._failure = self._failure or aiosmtplib.SMTPServerDisconnected("unexpected EOF received")
        self._wake()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._failure = self._failure or aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}")
        self._wake()
        self._client_protocol.connection_lost(exc)  # the client learns it is disconnected

    def pause_writing(self) -> None:  # the block is written at once; the buffer takes it
        pass

    def resume_writing(self) -> None:
        pass

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def replies(self, count: int, reply_seconds: float) -> list[SMTPResponse]:
        """`count` replies, each within `reply_seconds` of the one before."""
        while len(self._replies) < count:
            if self._failure is not None:
                raise self._failure
            self._changed = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._changed, reply_seconds)
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("timed out waiting for a reply") from exc
        return self._replies[:count]


async def exchange(
    client: aiosmtplib.SMTP, block: bytes, count: int, reply_seconds: float
) -> list[SMTPResponse]:
    """Write `block` (commands already checked, or message data) and read `count` replies,
    each within `reply_seconds` of the one before."""
    transport = cast(asyncio.WriteTransport | None, client.transport)
    if transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("connection lost")
    client_protocol = transport.get_protocol()
    reader = _Reader(client_protocol)
    transport.set_protocol(reader)
    try:
        transport.write(block)
        return await reader.replies(count, reply_seconds)
    finally:
        if not transport.is_closing():
            transport.set_protocol(client_protocol)
