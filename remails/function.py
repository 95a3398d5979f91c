"""Serve an event handler as a Knative-friendly HTTP function (functions-framework `aio.http`).

Answers, as a Knative Broker expects: 202 with an empty body when the handler has no reply,
200 with the reply event in binary mode, 400 when the request is not a CloudEvent (not
retried), 500 when the handler crashes (retried). Never a plain "OK" body, which a broker
counts as a failed delivery.
"""

from __future__ import annotations

import logging

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from remails.bus import Handler
from remails.log import log_event

__all__ = ["serve_event"]

logger = logging.getLogger("remails.function")


async def serve_event(request: Request, handler: Handler) -> Response:
    body = await request.body()
    try:
        event = from_http(dict(request.headers), body)
    except GenericException as exc:
        log_event(logger, "not a CloudEvent", logging.WARNING, error=type(exc).__name__)
        return Response(status_code=400)
    try:
        reply = await handler(event)
    except ValidationError as exc:  # the event's data does not fit its type: retrying won't help
        log_event(
            logger,
            "malformed event data",
            logging.WARNING,
            event_type=event["type"],
            errors=exc.error_count(),
        )
        return Response(status_code=400)
    except Exception:
        logger.exception("handler crashed", extra={"event_type": event["type"], "event_id": event["id"]})
        return Response(status_code=500)
    if reply is None:
        return Response(status_code=202)
    headers, reply_body = to_binary(reply)
    return Response(content=reply_body, status_code=200, headers=headers)
