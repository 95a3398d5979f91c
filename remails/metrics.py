"""Prometheus metrics: the families each role counts at its source, and the `/metrics` listener.

One registry per process. `remails up` with workers uses prometheus-client's multiprocess
mode: the supervisor makes a private directory, names it in PROMETHEUS_MULTIPROC_DIR for its
workers (read when prometheus_client is imported, so before the worker starts) and serves
their sum. Labels carry kinds and outcomes only, never a tenant's name or an address.

Figures that live in the database (queue depth, webhook backlog, domains, backups) are read
when scraped, by the process that serves `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from remails.db import Pool
from remails.db.operations import QUEUE_STATUSES, Figures, read_figures
from remails.http_server import bounded_config
from remails.log import log_event

__all__ = [
    "ACCEPTED",
    "ATTEMPTS",
    "AUTH_FAILURES",
    "DEAD_LETTERS",
    "DKIM_SIGNED_IN_LOOP",
    "FINISHED",
    "SMTP_SESSIONS",
    "WEBHOOK_DELIVERIES",
    "MetricsListener",
    "MultiprocessDir",
    "finished",
    "sample_pools",
    "serve_in_thread",
    "webhook_delivery",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

logger = logging.getLogger("remails.metrics")

ACCEPTED = Counter(
    "remails_messages_accepted", "Messages accepted (answered 250 or 202)", ["via"], registry=None
)
FINISHED = Counter(
    "remails_messages_finished",
    "Messages that reached a final status (delivered, bounced, failed, rejected)",
    ["status"],
    registry=None,
)
ATTEMPTS = Counter(
    "remails_delivery_attempts",
    "SMTP delivery attempts, one per destination domain, by outcome",
    ["result"],
    registry=None,
)
ACCEPT_TO_FINAL = Histogram(
    "remails_accept_to_final_seconds",
    "From accepting a message to its final status, decided after a delivery attempt",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
    registry=None,
)
SMTP_SESSIONS = Counter(
    "remails_smtp_sessions", "SMTP connections to the edge, by listener", ["port"], registry=None
)
AUTH_FAILURES = Counter(
    "remails_smtp_auth_failures", "SMTP AUTH attempts refused (bad credentials or throttled)", registry=None
)
DEAD_LETTERS = Counter(
    "remails_bus_dead_letters", "Events the in-process bus gave up delivering", registry=None
)
DKIM_SIGNED_IN_LOOP = Counter(
    "remails_dkim_signed_in_loop",
    "DKIM signatures the sender made itself because its signing process could not",
    registry=None,
)
WEBHOOK_DELIVERIES = Counter(
    "remails_webhook_deliveries",
    "Webhook POSTs by outcome (delivered, retrying, failed)",
    ["result"],
    registry=None,
)
POOL_CONNECTIONS = Gauge(
    "remails_db_pool_connections",
    "Database pool connections by pool and state",
    ["pool", "state"],
    registry=None,
    multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "remails_db_pool_max_connections",
    "Largest size of each database pool",
    ["pool"],
    registry=None,
    multiprocess_mode="livesum",
)

_FAMILIES = (
    ACCEPTED,
    FINISHED,
    ATTEMPTS,
    ACCEPT_TO_FINAL,
    SMTP_SESSIONS,
    AUTH_FAILURES,
    DEAD_LETTERS,
    DKIM_SIGNED_IN_LOOP,
    WEBHOOK_DELIVERIES,
    POOL_CONNECTIONS,
    POOL_MAX,
)
_pools: dict[str, Pool] = {}
_serving = False  # this process serves /metrics already


def finished(status: str, accepted_at: datetime | None = None) -> None:
    """Count a final status; with the accept time, observe how long it took."""
    if status not in ("delivered", "bounced", "failed", "rejected"):
        return  # deferred and the like are not final
    FINISHED.labels(status).inc()
    if accepted_at is not None:
        ACCEPT_TO_FINAL.observe(max(0.0, (datetime.now(UTC) - accepted_at).total_seconds()))


def webhook_delivery(delivered: bool, *, retrying: bool) -> None:
    WEBHOOK_DELIVERIES.labels("delivered" if delivered else "retrying" if retrying else "failed").inc()


def sample_pools(pools: dict[str, Pool] | None = None) -> None:
    """Set the pool gauges (at scrape time, and periodically in workers)."""
    for name, pool in (pools if pools is not None else _pools).items():
        size, idle = pool.get_size(), pool.get_idle_size()
        POOL_CONNECTIONS.labels(name, "in_use").set(size - idle)
        POOL_CONNECTIONS.labels(name, "idle").set(idle)
        POOL_MAX.labels(name).set(pool.get_max_size())


def watch_pools(pools: dict[str, Pool]) -> None:
    _pools.clear()
    _pools.update(pools)
    sample_pools()


async def sample_pools_forever(interval: float = 5.0) -> None:
    """In a worker: nobody scrapes this process, so its pool gauges are written on a clock."""
    while True:
        sample_pools()
        await asyncio.sleep(interval)


def _timestamp(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


class DatabaseCollector(Collector):
    """The figures read from the database at the last scrape; `remails_database_up` 0 when the
    read failed (the other families are then left out rather than shown stale)."""

    def __init__(self) -> None:
        self.figures: Figures | None = None
        self.up = False

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "remails_database_up", "1 when the last read of the database figures worked", value=int(self.up)
        )
        figures = self.figures
        if not self.up or figures is None:
            return
        queue = GaugeMetricFamily(
            "remails_queue_messages", "Unfinished messages by status", labels=["status"]
        )
        for status in QUEUE_STATUSES:
            queue.add_metric([status], figures.queue.get(status, 0))
        yield queue
        yield GaugeMetricFamily(
            "remails_webhook_backlog", "Webhook deliveries waiting to be sent", value=figures.webhook_backlog
        )
        domains = GaugeMetricFamily("remails_domains", "Sending domains by state", labels=["state"])
        for state, count in figures.domains.items():
            domains.add_metric([state], count)
        yield domains
        yield GaugeMetricFamily(
            "remails_backup_last_success_timestamp_seconds",
            "When the last good backup finished (0: never)",
            value=_timestamp(figures.backup_last_success),
        )
        yield GaugeMetricFamily(
            "remails_backup_last_failure_timestamp_seconds",
            "When the last failed backup ended (0: never)",
            value=_timestamp(figures.backup_last_failure),
        )


class MetricsListener:
    """`/metrics` on its own address. `database`: the pool to read the database figures from
    (None in a role that should not repeat them). `multiprocess_dir`: serve the workers' sum."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        database: Pool | None,
        multiprocess_dir: Path | None = None,
        read_timeout: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir is not None:
            multiprocess.MultiProcessCollector(self.registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        else:
            for family in _FAMILIES:
                self.registry.register(family)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._database = database
        self._db_figures = DatabaseCollector()
        if database is not None:
            self.registry.register(self._db_figures)
        self._read_timeout = read_timeout
        self._multiprocess = multiprocess_dir is not None
        app = Starlette(routes=[Route("/metrics", self._metrics, methods=["GET"])])
        self._server = _Server(bounded_config(app, host, port, header_timeout=10.0, max_concurrency=16))
        self._host, self._port = host, port
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        if not self._multiprocess:
            sample_pools()
        if self._database is None:
            return
        try:
            async with asyncio.timeout(self._read_timeout):
                self._db_figures.figures = await read_figures(self._database)
            self._db_figures.up = True
        except Exception:  # a scrape must answer even when the database does not
            self._db_figures.up = False

    async def _metrics(self, request: Request) -> Response:
        await self.refresh()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def start(self) -> None:
        """A metrics address that cannot be bound is logged, not fatal: mail keeps flowing,
        and Prometheus sees the target down (the RemailsTargetDown alert)."""
        global _serving
        # Bound here, not by uvicorn: on a bind error uvicorn calls sys.exit, which would
        # take the whole event loop down with it.
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family)
        except OSError as exc:
            _not_started(self._host, self._port, exc)
            return
        sock.setblocking(False)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the metrics server stopped during start-up")
            await asyncio.sleep(0.01)
        _serving = True

    @property
    def address(self) -> tuple[str, int]:
        sockname = self._server.servers[0].sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the runtime handles SIGINT/SIGTERM and stops us


def _not_started(host: str, port: int, exc: BaseException) -> None:
    log_event(
        logger,
        "metrics listener not started",
        logging.ERROR,
        listen=f"{host}:{port}",
        error=type(exc).__name__,
    )


class _SamplePools(Collector):
    """Registered first: sets the pool gauges just before the registry reads them."""

    def collect(self) -> Iterator[Metric]:
        sample_pools()
        return iter(())


def serve_in_thread(host: str, port: int, pools: dict[str, Pool]) -> None:
    """For a function process under functions-framework, whose event loop we do not own:
    prometheus-client's own HTTP server in a thread, once per process."""
    global _serving
    if _serving:
        return
    watch_pools(pools)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_SamplePools())
    for family in _FAMILIES:
        registry.register(family)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        _not_started(host, port, exc)
        return
    _serving = True


class MultiprocessDir:
    """The private directory the workers write their values to, made and removed by the
    supervisor; `env()` is what each worker's environment needs."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="remails-metrics-"))  # mode 0700

    def env(self) -> dict[str, str]:
        return {MULTIPROC_ENV: str(self.path)}

    def worker_exited(self, pid: int | None) -> None:
        """Drop a dead worker's gauges (its counters stay: they only ever add up)."""
        if pid is not None:
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def in_worker() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))
