"""What every long-lived process of ours does alike: stop on SIGINT/SIGTERM, watch the embedded
PostgreSQL, exit non-zero with one line when it was lost."""

from __future__ import annotations

import asyncio
import signal

from remails.bus.inprocess import InProcessBus
from remails.config import Settings
from remails.db import Database, Pool
from remails.db.embedded import EmbeddedPostgresLost, supervise

__all__ = ["exit_if_lost", "in_process_bus", "pipeline_pools", "stop_event", "watch_embedded"]


def stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def watch_embedded(settings: Settings, db: Database) -> asyncio.Task[None] | None:
    if db.embedded is None:
        return None
    return asyncio.create_task(
        supervise(
            db.embedded, settings.embedded_postgres_check_seconds, settings.embedded_postgres_restart_seconds
        )
    )


def exit_if_lost(watch: asyncio.Task[None] | None) -> None:
    """After a clean stop: exit non-zero with one line when the embedded PostgreSQL was lost."""
    if watch is not None and watch.done() and not watch.cancelled():
        exc = watch.exception()
        if isinstance(exc, EmbeddedPostgresLost):
            raise SystemExit(f"remails: {exc}")


def pipeline_pools(db: Database) -> dict[str, Pool]:
    return {"pipeline": db.pipeline_pool} if db.pipeline_pool is not None else {}


def in_process_bus(settings: Settings) -> InProcessBus:
    return InProcessBus(
        workers=settings.bus_workers,
        queue_size=settings.bus_queue_size,
        dead_letters_kept=settings.bus_dead_letters_kept,
        batch_max=settings.bus_batch_max,
        batch_wait=settings.bus_batch_wait_seconds,
    )
