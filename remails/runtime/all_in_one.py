"""`remails up`: every role in one process on the in-process bus (or, with REMAILS_WORKERS=N,
the supervisor of N such processes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

from remails import metrics
from remails.admin_token import ensure_admin_token
from remails.bus import Trigger
from remails.bus.inprocess import InProcessBus
from remails.bus.link import LinkEnd, serve_link
from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Database, connect
from remails.errors import SetupError
from remails.events import EventType, Tick, make_event
from remails.http_server import HttpServer
from remails.log import configure_logging, log_event
from remails.runtime.banner import Listening, show_token, welcome
from remails.runtime.lifecycle import (
    exit_if_lost,
    in_process_bus,
    pipeline_pools,
    stop_event,
    watch_embedded,
)
from remails.runtime.readiness import report_ready
from remails.runtime.sender_worker import run_sender_worker
from remails.runtime.supervisor import supervise_workers
from remails.runtime.wiring import function_triggers
from remails_functions.api import create_app
from remails_sender_node.agent import SenderNode
from remails_smtp_edge.server import EdgeServer

__all__ = ["Runtime", "run_all_in_one"]

logger = logging.getLogger("remails.runtime")

SENDER_LINK_WAIT_SECONDS = 60.0  # for the sender process to start and connect


@dataclass
class Runtime:
    """Every role in one process, on the in-process bus."""

    settings: Settings
    db: Database | None = None
    bus: InProcessBus = field(init=False)
    ctx: Context | None = None
    edge: EdgeServer | None = None
    sender: SenderNode | None = None
    api: HttpServer | None = None
    new_admin_token: str | None = None
    link: LinkEnd | None = None  # to the sender process, when it has one
    _link_server: asyncio.AbstractServer | None = None
    _ticker: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.bus = in_process_bus(self.settings)

    async def start(self) -> None:
        size = self.settings.db_pool_size
        self.db = await connect(self.settings, min_size=size // 2, max_size=size)
        serve_api = self.settings.worker_index in (None, 0)
        pipeline_pool = await self.db.open_pipeline_pool(max_size=self.settings.db_pipeline_pool_size)
        master_key = load_master_key(self.settings.secret_key, self.settings.data_dir)
        ctx = Context(self.settings, self.db.pool, self.bus, master_key, pipeline_pool)
        self.ctx = ctx
        for trigger in function_triggers(ctx):
            self.bus.subscribe(trigger)
        if self.settings.worker_role == "front":
            await self._link_sender_process()
        else:
            self.sender = SenderNode(ctx, decides=True)  # retry shares this process
            for trigger in self.sender.triggers():
                self.bus.subscribe(trigger)
            self.bus.start()
            await self.sender.start()
        self.edge = EdgeServer(ctx)
        await self.edge.start()
        self.new_admin_token = await ensure_admin_token(ctx.pool, self.settings.data_dir)
        if serve_api:  # with several workers, the first serves the API
            host, port = self.settings.http_listen
            self.api = HttpServer(
                create_app(ctx),
                host,
                port,
                header_timeout=self.settings.http_header_timeout_seconds,
                max_concurrency=self.settings.http_max_concurrency,
                trusted_proxies=self.settings.http_trusted_proxies,
            )
            await self.api.start()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def _link_sender_process(self) -> None:
        """The sender node runs in the sender process: message.routed goes to it over the link,
        and the edge opens once it is linked (its node registered, so intake routes to it)."""
        path = self.settings.sender_link
        if path is None:
            raise SetupError("REMAILS_SENDER_LINK: the front process needs the sender process's link")
        self.link = LinkEnd(self.bus.publish)
        self.bus.subscribe(
            Trigger(
                "sender-process",
                [{"exact": {"type": EventType.MESSAGE_ROUTED.value}}],
                self.link.publish_single,
                self.link.publish_batch,
            )
        )
        self.bus.start()
        self._link_server = await serve_link(path, self.link)
        try:
            await asyncio.wait_for(self.link.connected.wait(), SENDER_LINK_WAIT_SECONDS)
        except TimeoutError:
            raise SetupError(
                f"the sender process did not connect within {SENDER_LINK_WAIT_SECONDS:.0f} s"
            ) from None

    async def tick(self) -> None:
        await self.bus.publish(make_event(EventType.TICK, Tick(at=datetime.now(UTC))))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            await self.tick()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.api is not None:
            await self.api.stop()
        if self.edge is not None:
            await self.edge.stop()
        if self.sender is not None:
            await self.sender.stop()
        if self._link_server is not None:
            self._link_server.close()
        if self.link is not None:
            await self.link.close()
        await self.bus.stop()
        if self.db is not None:
            await self.db.close()


async def run_all_in_one(settings: Settings) -> None:
    configure_logging()
    if (settings.workers > 1 or settings.uses_sender_process) and settings.worker_index is None:
        await supervise_workers(settings)
        return
    if settings.worker_role == "sender":
        await run_sender_worker(settings)
        return
    # Before anything listens: a SIGTERM that follows the first answered /readyz stops us cleanly
    # (it would otherwise kill the process with the default handler, PostgreSQL left running).
    stop = stop_event()
    runtime = Runtime(settings)
    try:
        await runtime.start()
    except BaseException:
        await runtime.stop()  # what had started (the link to the sender process, pools)
        raise
    db, edge, api = runtime.db, runtime.edge, runtime.api
    if db is None or edge is None:
        raise SetupError("the runtime started without its database or its SMTP edge")
    metrics.watch_pools({"main": db.pool, **pipeline_pools(db)})
    listener, sampler = None, None
    if settings.worker_index is None:  # one process: it serves its own figures
        listener = metrics.MetricsListener(*settings.metrics_listen, database=db.pool)
        await listener.start()
    else:  # a worker: the supervisor serves the sum of the workers' figures
        sampler = asyncio.create_task(metrics.sample_pools_forever())
    watch = watch_embedded(settings, db)
    if api is not None:  # one process, or the worker that serves the API
        show_token(settings, runtime.new_admin_token)
        listening = Listening(edge.submission_address, edge.tls_address, edge.mx_address, api.address)
        print(welcome(settings, listening), file=sys.stderr, flush=True)
    report_ready()  # to the supervisor, when this is one of its workers
    if watch is not None:
        watch.add_done_callback(lambda _: stop.set())
    try:
        await stop.wait()
    finally:
        log_event(logger, "stopping")
        for task in (sampler, watch):
            if task is not None:
                task.cancel()
        if listener is not None:
            await listener.stop()
        await runtime.stop()
    exit_if_lost(watch)
