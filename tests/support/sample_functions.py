"""Functions-framework targets built with remails.function, for the adapter tests."""

from __future__ import annotations

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from remails.events import EventType, MessageEvent, make_event
from remails.function import serve_event


async def _validate(event: CloudEvent) -> CloudEvent:
    return make_event(EventType.MESSAGE_VALIDATED, MessageEvent.model_validate(event.data))


async def _ack(event: CloudEvent) -> None:
    return None


async def _crash(event: CloudEvent) -> None:
    raise RuntimeError("boom")


@functions_framework.aio.http
async def reply(request: Request) -> Response:
    return await serve_event(request, _validate)


@functions_framework.aio.http
async def ack(request: Request) -> Response:
    return await serve_event(request, _ack)


@functions_framework.aio.http
async def crash(request: Request) -> Response:
    return await serve_event(request, _crash)
