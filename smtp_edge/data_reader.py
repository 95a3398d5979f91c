"""The DATA section read in chunks, not lines (RFC 5321 §4.5.2).

Reading a message line by line costs a coroutine step and a few Python statements per line
(about 55 for 4 KB). `DataParser` takes whatever arrived and handles all complete lines at
once with bytes operations: it finds the final dot, removes the stuffed dots, counts the size
and checks the line lengths, falling back to line-by-line work only for a chunk with a line
over the limit. The result is that of the line reader it replaces, chunk boundaries or not:
the same content, the same problem (line too long, message too big) and the same bytes left
over after the final dot (the client's next commands).
"""

from __future__ import annotations

__all__ = ["LINE_TOO_LONG", "TOO_MUCH_DATA", "DataParser"]

LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 5.3.4 Message too big"


class DataParser:
    """Feed it what the socket gave; `feed` returns the bytes after the final dot once it
    is seen (possibly empty), else None."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit  # 0 or None: no limit
        self.line_limit = line_limit  # longest line, CRLF not counted
        self.content = bytearray()
        self.problem: str | None = None
        self.size = 0
        self._pending = bytearray()  # the start of a line whose CRLF has not come yet
        self._in_long_line = False  # skipping to the end of a line over the limit

    def feed(self, chunk: bytes) -> bytearray | None:
        pending = self._pending
        pending += chunk
        start = 0
        if self._in_long_line:
            end = pending.find(b"\r\n")
            if end < 0:
                del pending[:-1]  # keep a CR whose LF may come next
                return None
            start = end + 2
            self._in_long_line = False
        last = pending.rfind(b"\r\n", start)
        block_end = start if last < 0 else last + 2
        if block_end > start:
            leftover = self._lines(pending, start, block_end)
            if leftover is not None:
                return leftover
        del pending[:block_end]
        # A line start that is already too long to be a line: a CR at its end could still be
        # half of its CRLF, so one byte more than the limit plus CRLF is the sure sign.
        if len(pending) > self.line_limit + 2:
            self._too_long()
            self._in_long_line = True
            del pending[:-1]
        return None

    def _lines(self, buffer: bytearray, start: int, end: int) -> bytearray | None:
        """Complete lines buffer[start:end] (ending in CRLF); the leftover after the final
        dot when it is among them."""
        if buffer.startswith(b".\r\n", start):
            final = start
        else:
            found = buffer.find(b"\r\n.\r\n", start, end)
            final = found + 2 if found >= 0 else -1
        body_end = final if final >= 0 else end
        if body_end > start:
            body = bytes(buffer[start:body_end])
            lines = body.split(b"\r\n")
            if max(map(len, lines)) > self.line_limit:
                self._line_by_line(lines[:-1])
            else:
                self._append(body)
        if final < 0:
            return None
        leftover = buffer[final + 3 :]
        self._pending = bytearray()
        return leftover

    def _append(self, body: bytes) -> None:
        """Whole lines within the line limit."""
        self.size += len(body)
        if self.problem is not None:
            return
        if self.size_limit and self.size > self.size_limit:
            self.problem = TOO_MUCH_DATA
            self.content = bytearray()
            return
        if body.startswith(b"."):
            body = body[1:]
        self.content += body.replace(b"\r\n.", b"\r\n")

    def _line_by_line(self, lines: list[bytes]) -> None:
        for line in lines:
            if len(line) > self.line_limit:
                self._too_long()
                continue
            self._append(line + b"\r\n")

    def _too_long(self) -> None:
        """A line over the limit is dropped (not counted in the size); the message is
        refused after its final dot."""
        self.problem = self.problem or LINE_TOO_LONG
        self.content = bytearray()
