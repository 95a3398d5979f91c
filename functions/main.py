"""functions-framework targets, one per function: `functions-framework --source
functions/main.py --target validate` (or `remails serve function validate`).

Each target builds its context (settings, pool, Knative publisher) on the first request.
"""

from __future__ import annotations

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from remails.bus.filters import matches
from remails.context import function_context
from remails.function import serve_event
from remails_functions import ALL_SUBSCRIPTIONS


async def _dispatch(function: str, event: CloudEvent) -> CloudEvent | None:
    ctx = await function_context()
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
notify = functions_framework.aio.http(_target("notify"))
dns_check = functions_framework.aio.http(_target("dns_check"))
inbound = functions_framework.aio.http(_target("inbound"))
ip_manager = functions_framework.aio.http(_target("ip_manager"))
ticker = functions_framework.aio.http(_target("ticker"))
dead_letter = functions_framework.aio.http(_target("dead_letter"))
