"""The composition root: wires the kernel, the functions, the edge and the sender together.

`remails up` runs every role in one process; `remails serve ROLE` runs one. This is the only
module (with the CLI) that imports the deployable units.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import functions
from functions import ALL_SUBSCRIPTIONS, HANDLERS
from functions.api import create_app
from remails import metrics
from remails.admin_token import ensure_admin_token
from remails.bus import Handler, Trigger
from remails.bus.inprocess import InProcessBus
from remails.bus.knative import KnativePublisher
from remails.cli_commands import how_to_run
from remails.config import ConfigError, Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Database, Pool, connect
from remails.db.embedded import EmbeddedPostgresLost, supervise
from remails.events import EventType, Tick, make_event
from remails.function import serve_event
from remails.http_server import HttpServer, bounded_config
from remails.log import configure_logging, log_event
from sender_node.agent import SenderNode
from smtp_edge.server import EdgeServer

__all__ = ["Runtime", "run_all_in_one", "serve_role"]

logger = logging.getLogger("remails.runtime")


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
    _ticker: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.bus = InProcessBus(
            workers=self.settings.bus_workers,
            queue_size=self.settings.bus_queue_size,
            dead_letters_kept=self.settings.bus_dead_letters_kept,
        )

    async def start(self) -> None:
        size = self.settings.db_pool_size
        self.db = await connect(self.settings, min_size=size // 2, max_size=size)
        serve_api = self.settings.worker_index in (None, 0)
        pipeline_pool = await self.db.open_pipeline_pool(max_size=self.settings.db_pipeline_pool_size)
        master_key = load_master_key(self.settings.secret_key, self.settings.data_dir)
        ctx = Context(self.settings, self.db.pool, self.bus, master_key, pipeline_pool)
        self.ctx = ctx
        for sub in HANDLERS:
            handler = functools.partial(sub.handler, ctx)
            self.bus.subscribe(Trigger(f"{sub.function}:{sub.filters}", sub.filters, handler))
        self.sender = SenderNode(ctx)
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
            )
            await self.api.start()
        self._ticker = asyncio.create_task(self._tick_forever())

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
        await self.bus.stop()
        if self.db is not None:
            await self.db.close()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _welcome(settings: Settings, runtime: Runtime) -> str:
    assert runtime.edge is not None and runtime.api is not None
    sub_host, sub_port = runtime.edge.submission_address
    api_host, api_port = runtime.api.address
    tls_host, tls_port = runtime.edge.tls_address
    mx_host, mx_port = runtime.edge.mx_address
    database = (
        settings.database_url and "REMAILS_DATABASE_URL"
    ) or f"embedded, {(settings.data_dir / 'postgres').resolve()}"
    cli = how_to_run(sys.argv[0], shutil.which("remails"), Path.cwd())
    return "\n".join(
        [
            "remails is up",
            f"  SMTP submission (STARTTLS)  {sub_host}:{sub_port}",
            f"  SMTP submission (TLS)       {tls_host}:{tls_port}",
            f"  SMTP inbound MX (bounces)   {mx_host}:{mx_port}",
            f"  HTTP API                    http://{api_host}:{api_port}  (docs at /docs)",
            "  metrics                     http://{}:{}/metrics".format(*settings.metrics_listen),
            f"  database                    {database}",
            f"  outbound IPs                {', '.join(settings.outbound_ips)}",
            f"  notification e-mail         {_notification_mail(settings)}",
            f"  operator API token          in {(settings.data_dir / 'admin-token').resolve()}",
            "get going (in another terminal, in this directory and with the same REMAILS_* settings:",
            "the CLI works on this server's database and reads its settings from its own environment):",
            f"  {cli} org create Acme",
            f"  {cli} project create ORG_ID main",
            f"  {cli} domain add PROJECT_ID example.com   # then publish the printed DNS records",
            f"  {cli} domain verify example.com",
            f"  {cli} smtp-credential create PROJECT_ID   # SMTP username and password",
            f"  {cli} status                              # is it up, what is queued",
        ]
    )


def _notification_mail(settings: Settings) -> str:
    if settings.system_mail:
        return f"from {settings.system_from} (project {settings.system_project_id})"
    return "off: set REMAILS_SYSTEM_PROJECT_ID and REMAILS_SYSTEM_FROM (notifications are only recorded)"


def _show_token(settings: Settings, token: str | None) -> None:
    if token:
        print(
            f"operator API token (shown once; also in {settings.data_dir / 'admin-token'}):\n  {token}",
            file=sys.stderr,
            flush=True,
        )


def _watch_embedded(settings: Settings, db: Database) -> asyncio.Task[None] | None:
    if db.embedded is None:
        return None
    return asyncio.create_task(
        supervise(
            db.embedded, settings.embedded_postgres_check_seconds, settings.embedded_postgres_restart_seconds
        )
    )


def _exit_if_lost(watch: asyncio.Task[None] | None) -> None:
    """After a clean stop: exit non-zero with one line when the embedded PostgreSQL was lost."""
    if watch is not None and watch.done() and not watch.cancelled():
        exc = watch.exception()
        if isinstance(exc, EmbeddedPostgresLost):
            raise SystemExit(f"remails: {exc}")


async def run_all_in_one(settings: Settings) -> None:
    configure_logging()
    if settings.workers > 1 and settings.worker_index is None:
        await _supervise(settings)
        return
    runtime = Runtime(settings)
    await runtime.start()
    assert runtime.db is not None
    metrics.watch_pools({"main": runtime.db.pool, **_pipeline(runtime.db)})
    listener, sampler = None, None
    if settings.worker_index is None:  # one process: it serves its own figures
        listener = metrics.MetricsListener(*settings.metrics_listen, database=runtime.db.pool)
        await listener.start()
    else:  # a worker: the supervisor serves the sum of the workers' figures
        sampler = asyncio.create_task(metrics.sample_pools_forever())
    watch = _watch_embedded(settings, runtime.db)
    if settings.worker_index in (None, 0):
        _show_token(settings, runtime.new_admin_token)
        print(_welcome(settings, runtime), file=sys.stderr, flush=True)
    stop = _stop_event()
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
    _exit_if_lost(watch)


def _pipeline(db: Database) -> dict[str, Pool]:
    return {"pipeline": db.pipeline_pool} if db.pipeline_pool is not None else {}


def _die_with_parent() -> None:
    """In a worker: get SIGTERM when the supervisor dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _supervise(settings: Settings) -> None:
    """`remails up` with REMAILS_WORKERS=N: this process owns the database (embedded when no
    URL is set), runs the migrations, and keeps N worker processes running. Each worker is a
    whole runtime on the shared database — SMTP listeners shared with SO_REUSEPORT, its own
    in-process bus, its own sender node name — so one message stays in one worker from accept
    to delivery, and the sweep covers any worker that dies. Worker 0 also serves the API."""
    db = await connect(settings, max_size=2)
    _show_token(settings, await ensure_admin_token(db.pool, settings.data_dir))
    node = settings.effective_node_name
    stop = _stop_event()
    metrics_dir = metrics.MultiprocessDir()
    listener = metrics.MetricsListener(
        *settings.metrics_listen, database=db.pool, multiprocess_dir=metrics_dir.path
    )
    await listener.start()
    watch = _watch_embedded(settings, db)
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
            await asyncio.wait(
                [waiter, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
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
    _exit_if_lost(watch)


async def _serve_http(app: Any, settings: Settings) -> None:
    host, port = settings.http_listen
    config = bounded_config(
        app,
        host,
        port,
        header_timeout=settings.http_header_timeout_seconds,
        max_concurrency=settings.http_max_concurrency,
    )
    server = uvicorn.Server(config)
    await server.serve()


async def serve_role(settings: Settings, role: str, name: str | None) -> None:
    """One role in its own process, for containers: events go to the Knative broker (K_SINK)."""
    configure_logging()
    if settings.bus != "knative":
        raise ConfigError("REMAILS_BUS: `remails serve` runs one role of a Knative install; set knative")
    if role == "function":
        from functions_framework import create_app as create_function_app

        if name != "send" and name not in {sub.function for sub in ALL_SUBSCRIPTIONS}:
            raise ConfigError(f"unknown function {name!r}")
        source = str(Path(functions.__file__).with_name("send_function.py" if name == "send" else "main.py"))
        app = create_function_app(target=name, source=source)  # type: ignore[no-untyped-call]
        listener = metrics.MetricsListener(*settings.metrics_listen, database=None)
        await listener.start()
        try:
            await _serve_http(app, settings)
        finally:
            await listener.stop()
        return
    db = await connect(settings, max_size=settings.db_pool_size)
    pipeline_pool = await db.open_pipeline_pool(max_size=settings.db_pipeline_pool_size)
    publisher = KnativePublisher()
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    ctx = Context(settings, db.pool, publisher, master_key, pipeline_pool)
    stop = _stop_event()
    metrics.watch_pools({"main": db.pool, "pipeline": pipeline_pool})
    # The database figures come from the API role only, so that they are not repeated per pod.
    listener = metrics.MetricsListener(*settings.metrics_listen, database=db.pool if role == "api" else None)
    await listener.start()
    try:
        if role == "api":
            await ensure_admin_token(db.pool, settings.data_dir)
            await _serve_http(create_app(ctx), settings)
        elif role == "edge":
            edge = EdgeServer(ctx)
            await edge.start()
            await stop.wait()
            await edge.stop()
        elif role == "sender":
            # The broker's Triggers (one per outbound IP) POST message.routed here.
            sender = SenderNode(ctx)
            await sender.start()
            app = Starlette(routes=[Route("/", _event_endpoint(sender.handle_routed), methods=["POST"])])
            await _serve_http(app, settings)
            await sender.stop()
    finally:
        await listener.stop()
        await publisher.close()
        await db.close()


def _event_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await serve_event(request, handler)

    return endpoint
