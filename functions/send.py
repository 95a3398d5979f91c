"""send: accept a message by HTTP, store it and emit `message.received`, like the SMTP edge.

The core (`send_message`, `send_raw`) is mounted by the management API at
`POST /v1/projects/{project_id}/messages[/raw]`; the functions-framework target `send`
serves the same two paths on its own (`functions-framework --source functions/send.py
--target send`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import functions_framework.aio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from functions.api.auth import Principal, principal_for
from functions.api.errors import error_response, validation_response
from functions.api.models import RawSendRequest
from functions.compose import SendRequest, compose
from remails import metrics
from remails.context import Context, function_context
from remails.db import orgs
from remails.db.idempotency import canonical_body, claim_key
from remails.db.messages import NewMessage, insert_message
from remails.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, RemailsError
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event
from remails.message_headers import (
    MAX_LINE_OCTETS,
    longest_line,
    normalise_line_endings,
    prepend_headers,
    received_header,
)
from remails.rate_limit import TokenBuckets
from remails.sending_policy import check_sender

__all__ = ["request_digest", "send", "send_message", "send_raw"]

Accepted = tuple[int, dict[str, Any]]

logger = logging.getLogger("remails.send")


def request_digest(project_id: UUID, path: str, body: bytes) -> bytes:
    """What an Idempotency-Key is bound to: the project, the endpoint and the parsed body."""
    return hashlib.sha256(f"{project_id}|{path}|".encode() + canonical_body(body)).digest()


async def _store(
    ctx: Context,
    principal: Principal,
    project_id: UUID,
    mail_from: str,
    recipients: list[str],
    build: Any,
    label: str | None,
    metadata: dict[str, str],
    idempotency: tuple[str, bytes] | None,
) -> Accepted:
    project = await orgs.get_project(ctx.pool, project_id)
    if project is None:
        raise NotFound("no such project")
    principal.require(project.organization_id, "maintainer", project.id)
    facts = await orgs.sender_facts(ctx.pool, project.id)
    assert facts is not None
    refusal = check_sender(facts, mail_from)
    if refusal is not None:
        refusal.field = "from"
        raise refusal
    message_id = uuid4()
    raw, message_id_header = build(message_id, datetime.now(UTC))
    if len(raw) > ctx.settings.smtp_max_message_size:
        raise PayloadTooLarge(f"the message is larger than {ctx.settings.smtp_max_message_size} bytes")
    new = NewMessage(
        organization_id=project.organization_id,
        project_id=project.id,
        mail_from=mail_from,
        recipients=recipients,
        raw=raw,
        message_id_header=message_id_header,
        api_key_id=principal.key_id,
        label=label,
        metadata=metadata,
        id=message_id,
    )
    answer = {"id": str(message_id), "message_id": message_id_header, "status": "received"}
    async with ctx.pool.acquire() as conn, conn.transaction():
        if idempotency is not None:
            key, digest = idempotency
            earlier = await claim_key(conn, project.organization_id, key, digest, answer)
            if earlier is not None:
                if earlier.request_sha256 != digest:
                    raise Conflict(
                        "this Idempotency-Key was used with another request", field="Idempotency-Key"
                    )
                return 202, earlier.response
        await insert_message(conn, new, ctx.settings.message_lifetime_seconds)
    event = MessageEvent(
        message_id=message_id, organization_id=project.organization_id, project_id=project.id
    )
    try:
        await ctx.publisher.publish(make_event(EventType.MESSAGE_RECEIVED, event))
    except Exception as exc:  # stored; the sweep re-emits what this missed
        log_event(logger, "publish failed", logging.WARNING, message_id=message_id, error=type(exc).__name__)
    metrics.ACCEPTED.labels("http").inc()
    return 202, answer


def _received(ctx: Context, message_id: UUID, now: datetime) -> str:
    """Our trace field for a submission by HTTP (no HELO, so no `from`)."""
    return received_header(by=ctx.settings.hostname, protocol="HTTP", message_id=str(message_id), now=now)


async def send_message(
    ctx: Context,
    principal: Principal,
    project_id: UUID,
    request: SendRequest,
    idempotency: tuple[str, bytes] | None,
) -> Accepted:
    def build(message_id: UUID, now: datetime) -> tuple[bytes, str]:
        header = f"<{message_id}@{ctx.settings.hostname}>"
        composed = compose(request, message_id=header, now=now)
        return (_received(ctx, message_id, now) + "\r\n").encode() + composed, header

    return await _store(
        ctx,
        principal,
        project_id,
        request.from_.email,
        request.recipients,
        build,
        request.label,
        request.metadata,
        idempotency,
    )


async def send_raw(
    ctx: Context,
    principal: Principal,
    project_id: UUID,
    request: RawSendRequest,
    idempotency: tuple[str, bytes] | None,
) -> Accepted:
    try:
        data = base64.b64decode(request.raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is not valid base64", field="raw") from None
    # The addresses are one bare address each (RawSendRequest); the bytes must fit the wire.
    data = normalise_line_endings(data)
    if longest_line(data) > MAX_LINE_OCTETS:
        raise InvalidInput(f"has a line longer than {MAX_LINE_OCTETS} octets", field="raw")

    def build(message_id: UUID, now: datetime) -> tuple[bytes, str]:
        return prepend_headers(
            data,
            hostname=ctx.settings.hostname,
            message_id=str(message_id),
            now=now,
            trace=_received(ctx, message_id, now),
        )

    return await _store(
        ctx,
        principal,
        project_id,
        request.mail_from,
        request.recipients,
        build,
        request.label,
        request.metadata,
        idempotency,
    )


# -- the standalone functions-framework target ----------------------------------------------

_PATH = re.compile(r"^/v1/projects/(?P<project>[0-9a-fA-F-]{36})/messages(?P<raw>/raw)?/?$")
_buckets: TokenBuckets | None = None


async def handle_send_request(request: Request, ctx: Context, buckets: TokenBuckets) -> Response:
    match = _PATH.match(request.url.path)
    if match is None or request.method != "POST":
        return error_response(404, "not_found", "POST /v1/projects/{project_id}/messages[/raw]")
    try:
        principal = await principal_for(ctx, buckets, request.headers.get("authorization"))
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
    global _buckets
    ctx = await function_context()
    if _buckets is None:
        _buckets = TokenBuckets(ctx.settings.api_rate_per_second, ctx.settings.api_rate_burst)
    return await handle_send_request(request, ctx, _buckets)
