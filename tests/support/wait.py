"""Waiting on a condition with a bound — never a bare sleep as synchronisation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], bound: float = 10.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + bound
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {bound}s")
        await asyncio.sleep(interval)
