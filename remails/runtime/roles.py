"""`remails serve ROLE`: one role in its own process, for containers; events go to the Knative
Broker (K_SINK)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import remails_functions
from remails import metrics
from remails.admin_token import ensure_admin_token
from remails.bus import Handler
from remails.bus.knative import KnativePublisher
from remails.config import ConfigError, Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import connect
from remails.function import serve_event
from remails.http_server import bounded_config
from remails.log import configure_logging
from remails.runtime.lifecycle import stop_event
from remails_functions import ALL_SUBSCRIPTIONS
from remails_functions.api import create_app
from remails_sender_node.agent import SenderNode
from remails_smtp_edge.server import EdgeServer

__all__ = ["serve_role"]


async def _serve_http(app: Any, settings: Settings) -> None:
    host, port = settings.http_listen
    config = bounded_config(
        app,
        host,
        port,
        header_timeout=settings.http_header_timeout_seconds,
        max_concurrency=settings.http_max_concurrency,
        trusted_proxies=settings.http_trusted_proxies,
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
        source = str(
            Path(remails_functions.__file__).with_name("send_function.py" if name == "send" else "main.py")
        )
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
    stop = stop_event()
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
            try:
                await stop.wait()
            finally:
                await edge.stop()
        elif role == "sender":
            # The broker's Triggers (one per outbound IP) POST message.routed here.
            sender = SenderNode(ctx)
            await sender.start()
            try:
                app = Starlette(routes=[Route("/", _event_endpoint(sender.handle_routed), methods=["POST"])])
                await _serve_http(app, settings)
            finally:
                await sender.stop()
    finally:
        await listener.stop()
        await publisher.close()
        await db.close()


def _event_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await serve_event(request, handler)

    return endpoint
