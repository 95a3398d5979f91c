"""Group commit of accepted messages: what several SMTP sessions finish at about the same
time is written in one statement — one transaction, one WAL flush — and each session is
answered only once that statement has committed.

A batch is written as soon as no other batch is being written (and, with a wait, once it is
full or the wait is over): under load, the messages that arrive while one batch commits form
the next, so nothing waits when the edge is idle. One statement stores all of a batch or
none of it. When it fails for a reason of the connection or the server, every session of the
batch answers 451; when it fails for one message's own reason (a constraint, bad data), each
message is written alone, so the others are not refused for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from uuid import UUID

from remails.db.messages import NewMessage, is_data_error

__all__ = ["GroupCommit", "StoreFailed", "batch_size"]

Write = Callable[[list[NewMessage]], Awaitable[set[UUID]]]


class StoreFailed(Exception):
    """The batch holding this message was not stored (`cause` names why)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def batch_size(waiting: int, max_size: int) -> int:
    """How many of the waiting messages go into the next statement."""
    return min(waiting, max_size)


class GroupCommit:
    def __init__(self, write: Write, max_size: int, max_wait_seconds: float = 0.0) -> None:
        self._write = write
        self.max_size = max_size
        self.max_wait = max_wait_seconds
        self._waiting: list[tuple[NewMessage, asyncio.Future[bool]]] = []
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # statements written (for tests and the curious)

    @property
    def waiting(self) -> int:
        """Messages waiting for the next statement (not the one being written)."""
        return len(self._waiting)

    async def store(self, new: NewMessage) -> bool:
        """True once `new` is committed; False when the statement left it out (its credential
        is gone). Raises when it was not stored (StoreFailed when it was part of a batch)."""
        if self.max_size <= 1:
            self.batches += 1
            return new.id in await self._write([new])
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((new, future))
        if len(self._waiting) >= self.max_size:
            self._full.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            await self._write_waiting()
        finally:  # cancelled (the loop is stopping): nobody may wait for ever
            _fail(self._waiting, asyncio.CancelledError())
            self._waiting.clear()

    async def _write_waiting(self) -> None:
        while self._waiting:
            if self.max_wait > 0 and len(self._waiting) < self.max_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_wait):
                        await self._full.wait()
            count = batch_size(len(self._waiting), self.max_size)
            batch = [(new, f) for new, f in self._waiting[:count] if not f.done()]  # gone: not stored
            del self._waiting[:count]
            if len(self._waiting) < self.max_size:
                self._full.clear()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[NewMessage, asyncio.Future[bool]]]) -> None:
        self.batches += 1
        try:
            stored = await self._write([new for new, _ in batch])
        except BaseException as exc:  # also a cancellation: the batch's sessions get 451
            if len(batch) > 1 and is_data_error(exc):
                for one in batch:  # one message's own fault: the others are still stored
                    await self._commit([one])
                return
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for new, future in batch:
            if not future.done():
                future.set_result(new.id in stored)


def _fail(batch: list[tuple[NewMessage, asyncio.Future[bool]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(StoreFailed(type(exc).__name__))
