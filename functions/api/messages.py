"""Messages: send (JSON or raw), list with filters and cursor paging, show, retry."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from remails.db import egress, messages, orgs, suppressions
from remails.errors import Conflict, InvalidInput, NotFound
from remails.events import EventType, MessageEvent, make_event
from remails.message_view import HEARTBEATS_TO_BE_LIVE, explain, retry_refusal, with_suppressions
from remails.text import NO_NUL
from remails.types import MessageStatus
from remails_functions.api.audit_log import changing
from remails_functions.api.auth import Caller, Ctx
from remails_functions.api.models import MessageAccepted, MessageDetail, MessagePage, RawSendRequest
from remails_functions.api.organizations import project_of
from remails_functions.compose import SendRequest
from remails_functions.send import request_digest, send_message, send_raw

router = APIRouter(tags=["messages"])


class OrganizationBlockedConflict(Conflict):
    """A blocked organization's message is held, not retried (the block must be lifted)."""

    error_code = "organization_blocked"


# The event that moves a message on from the state a retry leaves it in.
_RESUMED_BY = {
    "received": EventType.MESSAGE_RECEIVED,
    "validated": EventType.MESSAGE_VALIDATED,
    "admitted": EventType.MESSAGE_ADMITTED,
}

IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=255, pattern=r"^[\x21-\x7e]+$")
]


async def _idempotency(request: Request, project_id: UUID, key: str | None) -> tuple[str, bytes] | None:
    if key is None:
        return None
    return key, request_digest(project_id, request.url.path, await request.body())


@router.post("/v1/projects/{project_id}/messages", status_code=202, response_model=MessageAccepted)
async def send(
    project_id: UUID,
    body: SendRequest,
    request: Request,
    ctx: Ctx,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Send a message built from JSON. The same Idempotency-Key and body within 24 h returns the
    first answer and sends nothing; the same key with another body is a 409."""
    status, answer = await send_message(
        ctx, caller, project_id, body, await _idempotency(request, project_id, idempotency_key)
    )
    return JSONResponse(answer, status_code=status)


@router.post("/v1/projects/{project_id}/messages/raw", status_code=202, response_model=MessageAccepted)
async def send_raw_message(
    project_id: UUID,
    body: RawSendRequest,
    request: Request,
    ctx: Ctx,
    caller: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Send a ready RFC 5322 message (base64) with an explicit envelope."""
    status, answer = await send_raw(
        ctx, caller, project_id, body, await _idempotency(request, project_id, idempotency_key)
    )
    return JSONResponse(answer, status_code=status)


def _cursor(row: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        at, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("is not a cursor from this API", field="cursor") from None


@router.get("/v1/messages", response_model=MessagePage)
async def list_messages(
    ctx: Ctx,
    caller: Caller,
    organization_id: UUID | None = None,
    project_id: UUID | None = None,
    status: MessageStatus | None = None,
    label: Annotated[str | None, Query(max_length=100, pattern=NO_NUL)] = None,
    recipient: Annotated[str | None, Query(max_length=320, pattern=NO_NUL)] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MessagePage:
    """Newest first. The operator's token lists every organization's unless
    `organization_id` (or `project_id`) narrows it."""
    org_id = organization_id or caller.organization_id
    project_id = project_id or caller.project_id
    if org_id is None and not caller.super_admin:
        raise InvalidInput("name an organization", field="organization_id")
    if org_id is not None:
        caller.require(org_id, "read_only", project_id)
    if project_id is not None:
        project = await project_of(ctx, caller, project_id)
        if org_id is not None and project.organization_id != org_id:
            raise NotFound("no such project")
    f = messages.MessageFilter(org_id, project_id, status, label, recipient, created_after, created_before)
    rows = await messages.list_messages(
        ctx.pool, f, before=_parse_cursor(cursor) if cursor else None, limit=limit + 1
    )
    page = rows[:limit]
    return MessagePage.model_validate(
        {"messages": page, "next_cursor": _cursor(page[-1]) if len(rows) > limit else None}
    )


async def _detail(ctx: Ctx, caller: Caller, message_id: UUID) -> dict[str, Any]:
    detail = await messages.get_message_detail(ctx.pool, message_id, caller.organization_id)
    if detail is None:
        raise NotFound("no such message")
    caller.require(detail["organization_id"], "read_only", detail["project_id"])
    return detail


async def _suppressed(ctx: Ctx, detail: dict[str, Any]) -> dict[str, str]:
    addresses = [r["address"] for r in detail["recipients"]]
    return await suppressions.suppressed_among(ctx.pool, detail["organization_id"], addresses)


async def _live_ips(ctx: Ctx, detail: dict[str, Any]) -> list[str] | None:
    """Where a message waiting to be routed could leave from now (None: it is not waiting)."""
    org = await orgs.get_organization(ctx.pool, detail["organization_id"])
    if detail["status"] != "admitted" or org is None:
        return None
    fresh = ctx.settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE
    return await egress.live_pool_ips(ctx.pool, org.ip_pool_id, fresh)


@router.get("/v1/messages/{message_id}", response_model=MessageDetail)
async def get_message(message_id: UUID, ctx: Ctx, caller: Caller) -> MessageDetail:
    """The message, each recipient's fate (`suppressed` when the address is on the list) and
    an `explanation` in words (why it waits, when the next try is)."""
    detail = await _detail(ctx, caller, message_id)
    suppressed = await _suppressed(ctx, detail)
    recipients = with_suppressions(detail["recipients"], suppressed)
    explanation = explain(detail, suppressed, await _live_ips(ctx, detail))
    return MessageDetail.model_validate({**detail, "recipients": recipients, "explanation": explanation})


@router.get(
    "/v1/messages/{message_id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}, "description": "the message's bytes"}},
)
async def get_message_raw(message_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    """The stored bytes: for a delivered sandbox message exactly what would have gone out,
    DKIM-Signature included (`Remails-Form: signed`); otherwise as received."""
    found = await messages.get_message_raw(ctx.pool, message_id, caller.organization_id)
    if found is None:
        raise NotFound("no such message")
    caller.require(found.organization_id, "read_only", found.project_id)
    if not found.raw:
        raise NotFound("the message's bytes are gone (removed after the project's retention)")
    form = "signed" if found.signed else "received"
    return Response(found.raw, media_type="message/rfc822", headers={"Remails-Form": form})


@router.post("/v1/messages/{message_id}/retry", status_code=202, response_model=MessageAccepted)
async def retry_message(message_id: UUID, ctx: Ctx, caller: Caller) -> MessageAccepted:
    """Try again: deferred, bounced, failed or held messages; delivered ones cannot be retried,
    and nothing of a blocked organization (409 `organization_blocked`). A retry that could
    move nothing (delivered, in progress, every undelivered recipient suppressed) is a 409 with
    the reason."""
    detail = await _detail(ctx, caller, message_id)
    caller.require(detail["organization_id"], "maintainer", detail["project_id"])
    org = await orgs.get_organization(ctx.pool, detail["organization_id"])
    if org is None or org.block_status != "not_blocked":  # the reason that outlives any retry
        raise OrganizationBlockedConflict("sending is blocked for this organization")
    refusal = retry_refusal(detail, await _suppressed(ctx, detail))
    if refusal is not None:
        raise Conflict(f"cannot retry: {refusal}")
    async with changing(ctx, caller, "message.retry", detail["organization_id"], message_id) as conn:
        moved = await messages.retry_message(
            conn, message_id, detail["organization_id"], ctx.settings.message_lifetime_seconds
        )
        if moved is None:
            raise Conflict(f"cannot retry: a {detail['status']} message whose bytes are gone (retention)")
    event_type = _RESUMED_BY[moved["status"]]
    data = MessageEvent(
        message_id=message_id, organization_id=moved["organization_id"], project_id=moved["project_id"]
    )
    await ctx.publisher.publish(make_event(event_type, data))
    return MessageAccepted(id=message_id, message_id=detail["message_id_header"], status=moved["status"])
