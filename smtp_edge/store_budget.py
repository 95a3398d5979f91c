"""How many message bytes the edge hands to the database at once.

Storing a message makes the database driver build the whole statement in memory (the bound
parameters, then the protocol message: about twice the message). With many large submissions
arriving together those copies, not the messages, would fill the pod's memory; so inserts wait
while `budget` bytes are already on their way. One insert is always let through, so a message
larger than the budget is stored too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["StoreBudget"]


class StoreBudget:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.in_use = 0
        self._changed = asyncio.Condition()

    def fits(self, size: int) -> bool:
        return self.in_use == 0 or self.in_use + size <= self.budget

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.fits(size))
            self.in_use += size
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= size
                self._changed.notify_all()
