"""`remails up` with REMAILS_WORKERS=N: the process that owns the database and keeps N worker
processes running."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from remails import metrics
from remails.admin_token import ensure_admin_token
from remails.config import Settings
from remails.db import connect
from remails.errors import ConfigError
from remails.log import log_event
from remails.runtime.banner import show_token
from remails.runtime.lifecycle import exit_if_lost, stop_event, watch_embedded
from remails.runtime.readiness import READY_FD_ENV, read_report

__all__ = ["supervise_workers"]

logger = logging.getLogger("remails.runtime")


def _die_with_parent() -> None:
    """In a worker: get SIGTERM when the supervisor dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def supervise_workers(settings: Settings) -> None:
    """`remails up` with REMAILS_WORKERS=N or a sender process: this process owns the database
    (embedded when no URL is set), runs the migrations and keeps the worker processes running.
    With a sender process they are a front and the sender, joined by their link; otherwise each
    is a whole runtime on the shared database — SMTP listeners shared with SO_REUSEPORT, its own
    in-process bus, its own sender node name — so one message stays in one worker from accept
    to delivery, and the sweep covers any worker that dies. Worker 0 also serves the API."""
    if settings.uses_sender_process and settings.workers > 1:
        raise ConfigError("REMAILS_SENDER_PROCESS: one front process only; set REMAILS_WORKERS=1")
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

    link_dir = Path(tempfile.mkdtemp(prefix="remails-link-"))
    roles: list[dict[str, str]] = [{}] * settings.workers
    if settings.uses_sender_process:
        # The front accepts, routes and serves the API; the sender process, with the node's
        # own name, claims and delivers. The front listens on the link, the sender connects.
        link = {"REMAILS_SENDER_LINK": str(link_dir / "sender.sock")}
        roles = [
            {"REMAILS_WORKER_ROLE": "front", "REMAILS_NODE_NAME": f"{node}-front", **link},
            {"REMAILS_WORKER_ROLE": "sender", "REMAILS_NODE_NAME": node, **link},
        ]

    failures: list[str] = []

    async def worker(index: int) -> None:
        env = {
            **os.environ,
            "REMAILS_DATABASE_URL": db.dsn,
            "REMAILS_DATABASE_EMBEDDED": "true" if db.embedded is not None else "false",
            "REMAILS_WORKER_INDEX": str(index),
            "REMAILS_NODE_NAME": f"{node}-{index}",
            **roles[index],
            **metrics_dir.env(),
        }
        first = True
        while not stop.is_set():
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "remails.cli",
                "up",
                env={**env, READY_FD_ENV: str(write_end)},
                pass_fds=(write_end,),
                preexec_fn=_die_with_parent,
            )
            os.close(write_end)
            waiter = asyncio.create_task(process.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()  # one per restart: not left behind for each worker that died
            if not waiter.done():
                process.send_signal(signal.SIGTERM)
                await waiter
                os.close(read_end)
                metrics_dir.worker_exited(process.pid)
                return
            up, reason = read_report(_read_all(read_end))
            os.close(read_end)
            metrics_dir.worker_exited(process.pid)
            if first and not up and reason is not None:
                # It could not start and said why (a port in use, a bad setting): stop
                # everything with its reason rather than start it again forever. One that
                # crashed (the database restarting, say) is started again.
                failures.append(reason)
                stop.set()
                return
            first = first and not up
            log_event(
                logger, "worker exited, restarting", logging.ERROR, worker=index, code=process.returncode
            )
            await asyncio.sleep(1.0)  # do not spin on a worker that cannot start

    try:
        await asyncio.gather(*(worker(i) for i in range(len(roles))))
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
        if watch is not None:
            watch.cancel()
        await listener.stop()
        metrics_dir.remove()
        await db.close()
    if failures:
        raise SystemExit(f"remails: {failures[0]}")
    exit_if_lost(watch)


def _read_all(fd: int) -> bytes:
    """What a worker wrote on its report pipe (it has exited: nothing more comes)."""
    chunks = []
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)
