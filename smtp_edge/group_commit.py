"""Group commit of accepted messages: what several SMTP sessions finish at about the same
time is written in one statement — one transaction, one WAL flush — and each session is
answered only once that statement has committed (`remails.batching`). One statement stores
all of a batch or none of it; a batch that failed for one message's own reason (a
constraint, bad data) is written again one message at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

from remails.batching import Batcher, BatchFailed
from remails.db.messages import NewMessage, is_data_error

__all__ = ["GroupCommit", "StoreFailed"]

StoreFailed = BatchFailed  # the batch holding this message was not stored


class GroupCommit(Batcher[NewMessage, bool]):
    def __init__(
        self,
        write: Callable[[list[NewMessage]], Awaitable[set[UUID]]],
        max_size: int,
        max_wait_seconds: float = 0.0,
    ) -> None:
        async def stored(batch: list[NewMessage]) -> list[bool]:
            ids = await write(batch)
            return [new.id in ids for new in batch]

        super().__init__(stored, max_size, max_wait_seconds, is_own_fault=is_data_error)

    async def store(self, new: NewMessage) -> bool:
        """True once `new` is committed; False when the statement left it out (its credential
        is gone). Raises when it was not stored (StoreFailed when it was part of a batch)."""
        return await self.submit(new)
