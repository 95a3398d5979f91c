"""The `send` function on its own: `functions-framework --source functions/send_function.py
--target send` serves `POST /v1/projects/{project_id}/messages[/raw]` with the same core as the
management API (`functions/send.py`), for a deployment that scales sending apart from the API.
"""

from __future__ import annotations

import json
import re
from uuid import UUID

import functions_framework.aio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from remails.context import Context, function_context
from remails.errors import PayloadTooLarge, RemailsError
from remails.rate_limit import TokenBuckets
from remails_functions.api.auth import principal_for, request_client_ip
from remails_functions.api.errors import error_response, validation_response
from remails_functions.api.models import RawSendRequest
from remails_functions.compose import SendRequest
from remails_functions.send import request_digest, send_message, send_raw

__all__ = ["handle_send_request", "send"]

_PATH = re.compile(r"^/v1/projects/(?P<project>[0-9a-fA-F-]{36})/messages(?P<raw>/raw)?/?$")
_limits: tuple[TokenBuckets, TokenBuckets] | None = None


async def handle_send_request(
    request: Request, ctx: Context, buckets: TokenBuckets, failures: TokenBuckets
) -> Response:
    """`buckets`: requests per organization; `failures`: failed authentications per client."""
    match = _PATH.match(request.url.path)
    if match is None or request.method != "POST":
        return error_response(404, "not_found", "POST /v1/projects/{project_id}/messages[/raw]")
    try:
        client = request_client_ip(request)
        authorization = request.headers.get("authorization")
        principal = await principal_for(ctx, buckets, authorization, client=client, failures=failures)
        body = await request.body()
        if len(body) > ctx.settings.api_max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {ctx.settings.api_max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except ValueError:
            return error_response(400, "invalid_json", "the body is not valid JSON")
        project_id = UUID(match["project"])
        key = request.headers.get("idempotency-key")
        idempotency = (key, request_digest(project_id, request.url.path, body)) if key else None
        if match["raw"]:
            status, answer = await send_raw(
                ctx, principal, project_id, RawSendRequest.model_validate(payload), idempotency
            )
        else:
            status, answer = await send_message(
                ctx, principal, project_id, SendRequest.model_validate(payload), idempotency
            )
    except ValidationError as exc:
        return validation_response(list(exc.errors()))
    except RemailsError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else {}
        return error_response(exc.http_status, exc.error_code, exc.message, exc.field, **headers)
    return JSONResponse(answer, status_code=status)


@functions_framework.aio.http
async def send(request: Request) -> Response:
    global _limits
    ctx = await function_context()
    if _limits is None:
        settings = ctx.settings
        _limits = (
            TokenBuckets(settings.api_rate_per_second, settings.api_rate_burst),
            TokenBuckets(settings.api_auth_failure_rate_per_second, settings.api_auth_failure_burst),
        )
    return await handle_send_request(request, ctx, *_limits)
