"""The composition root: wires the kernel, the functions, the edge and the sender together.

`remails up` runs every role in one process; `remails serve ROLE` runs one.
"""

from __future__ import annotations

import asyncio
import signal

from remails.config import Settings

__all__ = ["run_all_in_one", "serve_role"]


async def run_all_in_one(settings: Settings) -> None:
    raise NotImplementedError


async def serve_role(settings: Settings, role: str, name: str | None) -> None:
    raise NotImplementedError


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
