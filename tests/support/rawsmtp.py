"""A raw SMTP client over a socket, for input that well-behaved libraries refuse to send."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, address: tuple[str, int], tls: ssl.SSLContext | None = None, prefix: bytes = b""
    ) -> RawSmtp:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                *address, ssl=tls, server_hostname=None if tls is None else "mx.remails.test"
            ),
            10,
        )
        if prefix:
            writer.write(prefix)
        session = cls(reader, writer)
        return session

    async def reply(self) -> str:
        """One whole reply (all continuation lines), as text."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line.decode().rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, line: str) -> str:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
