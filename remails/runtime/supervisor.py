"""`remails up` with REMAILS_WORKERS=N: the process that owns the database and keeps N worker
processes running."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

from remails import metrics
from remails.admin_token import ensure_admin_token
from remails.config import Settings
from remails.db import connect
from remails.log import log_event
from remails.runtime.banner import show_token
from remails.runtime.lifecycle import exit_if_lost, stop_event, watch_embedded

__all__ = ["supervise_workers"]

logger = logging.getLogger("remails.runtime")


def _die_with_parent() -> None:
    """In a worker: get SIGTERM when the supervisor dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def supervise_workers(settings: Settings) -> None:
    """`remails up` with REMAILS_WORKERS=N: this process owns the database (embedded when no
    URL is set), runs the migrations, and keeps N worker processes running. Each worker is a
    whole runtime on the shared database — SMTP listeners shared with SO_REUSEPORT, its own
    in-process bus, its own sender node name — so one message stays in one worker from accept
    to delivery, and the sweep covers any worker that dies. Worker 0 also serves the API."""
    db = await connect(settings, max_size=2)
    show_token(settings, await ensure_admin_token(db.pool, settings.data_dir))
    node = settings.effective_node_name
    stop = stop_event()
    metrics_dir = metrics.MultiprocessDir()
    listener = metrics.MetricsListener(
        *settings.metrics_listen, database=db.pool, multiprocess_dir=metrics_dir.path
    )
    await listener.start()
    watch = watch_embedded(settings, db)
    if watch is not None:
        watch.add_done_callback(lambda _: stop.set())

    async def worker(index: int) -> None:
        env = {
            **os.environ,
            "REMAILS_DATABASE_URL": db.dsn,
            "REMAILS_WORKER_INDEX": str(index),
            "REMAILS_NODE_NAME": f"{node}-{index}",
            **metrics_dir.env(),
        }
        while not stop.is_set():
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "remails.cli", "up", env=env, preexec_fn=_die_with_parent
            )
            waiter = asyncio.create_task(process.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()  # one per restart: not left behind for each worker that died
            if not waiter.done():
                process.send_signal(signal.SIGTERM)
                await waiter
                metrics_dir.worker_exited(process.pid)
                return
            metrics_dir.worker_exited(process.pid)
            log_event(
                logger, "worker exited, restarting", logging.ERROR, worker=index, code=process.returncode
            )
            await asyncio.sleep(1.0)  # do not spin on a worker that cannot start

    try:
        await asyncio.gather(*(worker(i) for i in range(settings.workers)))
    finally:
        if watch is not None:
            watch.cancel()
        await listener.stop()
        metrics_dir.remove()
        await db.close()
    exit_if_lost(watch)
