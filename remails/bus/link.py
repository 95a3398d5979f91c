"""The link between `remails up`'s front process and its sender process: CloudEvents as JSON
lines over a Unix socket, both ways.

The front (edge, API, functions) listens; the sender process connects once its node is
registered, and again whenever the link breaks. Events are notices, as on the bus: those
written while no peer is connected wait in a bounded backlog (past it the oldest go, and the
sweep re-emits what they announced), and one write carries every event published during one
turn of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from cloudevents.http import CloudEvent

from remails.log import log_event

__all__ = ["BACKLOG_MAX", "LinkEnd", "connect_link", "decode_event", "encode_event", "serve_link"]

logger = logging.getLogger("remails.link")

BACKLOG_MAX = 100_000  # events kept while the peer is away
CLOSE_WAIT_SECONDS = 2.0  # for the reader of a closed connection to end
LINE_LIMIT = 1 << 20  # bytes: an event line longer than this breaks the link (ours are < 2 KB)

Publish = Callable[[CloudEvent], Awaitable[None]]


def encode_event(event: CloudEvent) -> bytes:
    """One JSON line: the event's attributes (id and time kept) and its JSON data."""
    entry = {"a": dict(event.get_attributes()), "d": event.data}
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def decode_event(line: bytes) -> CloudEvent:
    """The event of one line; ValueError (json's) when it is not one of ours."""
    entry = json.loads(line)
    if not isinstance(entry, dict) or not isinstance(entry.get("a"), dict):
        raise ValueError("not an event line")
    try:
        return CloudEvent(entry["a"], entry.get("d"))
    except Exception as exc:  # the SDK's own errors (a required attribute missing, say)
        raise ValueError(f"not an event: {exc}") from exc


class LinkEnd:
    """One side of the link: `publish` sends (through the backlog while unconnected), and the
    events read from the peer go to `deliver`."""

    def __init__(self, deliver: Publish, backlog_max: int = BACKLOG_MAX) -> None:
        self._deliver = deliver
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[bytes] = deque(maxlen=backlog_max)  # encoded events
        self._flush_scheduled = False
        self._serving: set[asyncio.Task[object]] = set()
        self.connected = asyncio.Event()

    async def publish(self, event: CloudEvent) -> None:
        self._pending.append(encode_event(event))  # an event that cannot be sent fails here
        if self._writer is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def publish_single(self, event: CloudEvent) -> CloudEvent | None:
        """A bus handler: forward `event`, reply nothing."""
        await self.publish(event)
        return None

    async def publish_batch(self, events: Sequence[CloudEvent]) -> Sequence[CloudEvent]:
        """A bus batch handler: forward `events`, reply nothing."""
        for event in events:
            await self.publish(event)
        return []

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writer is not None:
            self._flush_to(self._writer)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Carry events over one connection until it breaks; the newest connection wins."""
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        previous, self._writer = self._writer, writer
        if previous is not None:
            previous.close()
        self.connected.set()
        self._flush()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    event = decode_event(line)
                except ValueError:
                    log_event(logger, "unreadable event line dropped", logging.ERROR, size=len(line))
                    continue
                await self._deliver(event)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log_event(logger, "link broken", logging.WARNING, error=type(exc).__name__)
        finally:
            if task is not None:
                self._serving.discard(task)
            if self._writer is writer:
                self._writer = None
                self.connected.clear()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Send what is pending and close; the connection's reader ends with it."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._flush_to(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        serving = [t for t in self._serving if t is not asyncio.current_task()]
        if serving:
            await asyncio.wait(serving, timeout=CLOSE_WAIT_SECONDS)

    def _flush_to(self, writer: asyncio.StreamWriter) -> None:
        if self._pending and not writer.is_closing():
            writer.write(b"".join(self._pending))
            self._pending.clear()


async def serve_link(path: str, end: LinkEnd) -> asyncio.AbstractServer:
    """The front's side: listen on `path` for the sender process."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        log_event(logger, "sender process connected")
        await end.serve(reader, writer)
        log_event(logger, "sender process disconnected")

    return await asyncio.start_unix_server(accept, path, limit=LINE_LIMIT)


async def connect_link(path: str, end: LinkEnd, stop: asyncio.Event, retry_seconds: float = 0.1) -> None:
    """The sender process's side: connect to the front, serve the connection, connect again
    when it breaks (the front restarting), until `stop` is set."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
        except (ConnectionError, FileNotFoundError, OSError):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_seconds)
            continue
        await end.serve(reader, writer)
