"""Natural batching of one statement's work: what several tasks submit at about the same time
goes to the database in one call, and each task gets its own result once that call is done.

A batch is written as soon as no other batch is being written (and, with a wait, once it is
full or the wait is over): under load, the items that arrive while one batch is written form
the next, so nothing waits when the system is idle. When the call fails for a reason of the
connection or the server, every task of the batch gets `BatchFailed`; when it fails for one
item's own reason (`is_own_fault`: a constraint, bad data), each item is written alone, so the
others do not fail for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchFailed", "Batcher", "batch_size"]

T = TypeVar("T")
R = TypeVar("R")


class BatchFailed(Exception):
    """The batch holding this item was not written (`cause` names why)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def batch_size(waiting: int, max_size: int) -> int:
    """How many of the waiting items go into the next call."""
    return min(waiting, max_size)


class Batcher(Generic[T, R]):
    """`write` takes a batch and returns one result for each of its items, in order."""

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_size: int,
        max_wait_seconds: float = 0.0,
        *,
        is_own_fault: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._write = write
        self.max_size = max_size
        self.max_wait = max_wait_seconds
        self._is_own_fault = is_own_fault
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # calls made (for tests and the curious)

    @property
    def waiting(self) -> int:
        """Items waiting for the next call (not the one being written)."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        """`item`'s result once its batch is written. Raises when it was not (BatchFailed
        when it was part of a batch)."""
        if self.max_size <= 1:
            self.batches += 1
            (result,) = await self._write([item])
            return result
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
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
            batch = [(item, f) for item, f in self._waiting[:count] if not f.done()]  # gone: skipped
            del self._waiting[:count]
            if len(self._waiting) < self.max_size:
                self._full.clear()
            if batch:
                await self._call(batch)

    async def _call(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        try:
            results = await self._write([item for item, _ in batch])
        except BaseException as exc:  # also a cancellation: every task of the batch hears of it
            if len(batch) > 1 and self._is_own_fault(exc):
                for one in batch:  # one item's own fault: the others are still written
                    await self._call([one])
                return
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(BatchFailed(type(exc).__name__))
