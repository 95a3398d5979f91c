"""functions-framework targets, one per function: `functions-framework --source
functions/main.py --target validate` (or `remails serve function validate`).

Each target builds its context (settings, pool, Knative publisher) on the first request.
"""

from __future__ import annotations

import asyncio

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from functions import ALL_SUBSCRIPTIONS
from remails.bus.filters import matches
from remails.bus.knative import KnativePublisher
from remails.config import load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import create_pool
from remails.function import serve_event

_context: Context | None = None
_lock = asyncio.Lock()


async def _ctx() -> Context:
    global _context
    async with _lock:
        if _context is None:
            settings = load_settings()
            if settings.database_url is None:
                raise RuntimeError("REMAILS_DATABASE_URL must be set for a function")
            pool = await create_pool(settings.database_url, max_size=2)
            pipeline_pool = await create_pool(settings.database_url, max_size=5, durable=False)
            master_key = load_master_key(settings.secret_key, settings.data_dir)
            _context = Context(settings, pool, KnativePublisher(), master_key, pipeline_pool)
        return _context


async def _dispatch(function: str, event: CloudEvent) -> CloudEvent | None:
    ctx = await _ctx()
    for sub in ALL_SUBSCRIPTIONS:
        if sub.function == function and matches(sub.filters, event.get_attributes()):
            return await sub.handler(ctx, event)
    return None  # not ours: acknowledge, do not retry


def _target(function: str) -> functions_framework.aio.HTTPFunction:
    async def handler(request: Request) -> Response:
        return await serve_event(request, lambda event: _dispatch(function, event))

    handler.__name__ = function
    return handler


validate = functions_framework.aio.http(_target("validate"))
quota = functions_framework.aio.http(_target("quota"))
route = functions_framework.aio.http(_target("route"))
retry = functions_framework.aio.http(_target("retry"))
webhooks = functions_framework.aio.http(_target("webhooks"))
ip_manager = functions_framework.aio.http(_target("ip_manager"))
ticker = functions_framework.aio.http(_target("ticker"))
dead_letter = functions_framework.aio.http(_target("dead_letter"))
