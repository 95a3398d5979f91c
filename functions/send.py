"""send: accept a message by HTTP, store it and emit `message.received`, like the SMTP edge.

`send_message` and `send_raw` are mounted by the management API at
`POST /v1/projects/{project_id}/messages[/raw]`; `functions/send_function.py` serves the
same two paths as a functions-framework target of its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from remails.acceptance import announce_received
from remails.context import Context
from remails.db import orgs
from remails.db.idempotency import canonical_body, claim_key
from remails.db.messages import NewMessage, insert_message
from remails.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from remails.message_headers import (
    MAX_LINE_OCTETS,
    longest_line,
    normalise_line_endings,
    prepend_headers,
    received_header,
)
from remails.sending_policy import check_sender
from remails_functions.api.auth import Principal
from remails_functions.api.models import RawSendRequest
from remails_functions.compose import SendRequest, compose

__all__ = ["Accepted", "request_digest", "send_message", "send_raw"]

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
    if facts is None:  # deleted meanwhile
        raise NotFound("no such project")
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
    await announce_received(ctx, new, "http")
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
