"""Webhook endpoints per project: create (secret shown once), list, update, delete, rotate the
secret, see recent deliveries, resend one, send a test event."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, get_args
from uuid import UUID

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from remails import webhook_endpoints
from remails.context import Context
from remails.db import audit, notifications, webhook_deliveries
from remails.db import webhook_endpoints as endpoints_db
from remails.db.webhook_endpoints import Endpoint
from remails.errors import Conflict, NotFound
from remails.text import ClientInput
from remails.types import WebhookEventType
from remails.webhook_targets import check_target
from remails_functions.api.audit_log import actor_of, changing, url_origin
from remails_functions.api.auth import Caller, Ctx, Principal
from remails_functions.api.organizations import organization_of, project_of
from remails_functions.webhooks import send_due

router = APIRouter(tags=["webhooks"])

WebhookEvent = WebhookEventType
_background: set[asyncio.Task[int]] = set()


_ALL_EVENTS: tuple[WebhookEventType, ...] = get_args(WebhookEventType)
Events = Annotated[list[WebhookEvent], Field(min_length=1, max_length=len(_ALL_EVENTS))]


class WebhookCreate(ClientInput):
    url: Annotated[str, Field(min_length=8, max_length=2000)]
    events: Events = Field(default_factory=lambda: list(_ALL_EVENTS), description="default: every event")


class WebhookUpdate(ClientInput):
    url: Annotated[str | None, Field(min_length=8, max_length=2000)] = None
    events: Events | None = None
    enabled: bool | None = None


class WebhookOut(BaseModel):
    id: UUID
    project_id: UUID
    url: str
    events: list[str]
    enabled: bool
    failing_since: datetime | None
    disabled_reason: str | None
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_…, shown once; verify signatures with it")


class SecretRotated(BaseModel):
    secret: str = Field(description="the new secret; the previous one stays valid for 24 hours")


class DeliveryOut(BaseModel):
    id: UUID
    event_type: str
    message_id: UUID | None
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: int | None
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None


class TestSent(BaseModel):
    delivery_id: UUID


class NotificationOut(BaseModel):
    id: UUID
    kind: str
    created_at: datetime
    subject: str
    message: str = Field(description="the subject, under its earlier name")
    details: dict[str, Any]
    subject_id: UUID | None  # what it is about: the endpoint, the domain (None for quota)
    mail_status: str  # pending, sent (to notification_email and the admins) or not_sent


def _out(endpoint: Endpoint) -> dict[str, Any]:
    data = asdict(endpoint)
    data.pop("organization_id")
    return data


async def _endpoint_of(ctx: Context, caller: Principal, webhook_id: UUID, role: str) -> Endpoint:
    endpoint = await endpoints_db.get_endpoint(ctx.pool, webhook_id)
    if endpoint is None:
        raise NotFound("no such webhook")
    caller.require(endpoint.organization_id, role, endpoint.project_id)
    return endpoint


def _disabled() -> Conflict:
    return Conflict("the webhook endpoint is disabled; enable it first (PATCH enabled: true)")


@router.post("/v1/projects/{project_id}/webhooks", status_code=201, response_model=WebhookCreated)
async def create_webhook(project_id: UUID, body: WebhookCreate, ctx: Ctx, caller: Caller) -> WebhookCreated:
    project = await project_of(ctx, caller, project_id, "admin")
    new = await webhook_endpoints.prepare_endpoint(ctx.settings, ctx.master_key, body.url)  # DNS first
    events = [str(e) for e in body.events]
    async with ctx.pool.acquire() as conn, conn.transaction():
        endpoint = await webhook_endpoints.store_endpoint(conn, new, project_id, events)
        details = {"project_id": project_id, "url": url_origin(endpoint.url), "events": endpoint.events}
        await audit.record(
            conn,
            actor_of(caller),
            "webhook.create",
            organization_id=project.organization_id,
            target=endpoint.id,
            details=details,
        )
    return WebhookCreated(**_out(endpoint), secret=new.secret)


@router.get("/v1/projects/{project_id}/webhooks", response_model=list[WebhookOut])
async def list_webhooks(project_id: UUID, ctx: Ctx, caller: Caller) -> list[WebhookOut]:
    await project_of(ctx, caller, project_id)
    return [WebhookOut(**_out(e)) for e in await endpoints_db.list_endpoints(ctx.pool, project_id)]


@router.get("/v1/webhooks/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: UUID, ctx: Ctx, caller: Caller) -> WebhookOut:
    return WebhookOut(**_out(await _endpoint_of(ctx, caller, webhook_id, "read_only")))


@router.patch("/v1/webhooks/{webhook_id}", response_model=WebhookOut)
async def update_webhook(webhook_id: UUID, body: WebhookUpdate, ctx: Ctx, caller: Caller) -> WebhookOut:
    before = await _endpoint_of(ctx, caller, webhook_id, "admin")
    if body.url is not None:
        await check_target(ctx.settings, body.url)
    events = [str(e) for e in body.events] if body.events is not None else None
    changed = body.model_dump(mode="json", exclude_unset=True)
    if body.url is not None:
        changed["url"] = url_origin(body.url)
    async with changing(ctx, caller, "webhook.update", before.organization_id, webhook_id, changed) as conn:
        endpoint = await endpoints_db.update_endpoint(
            conn, webhook_id, url=body.url, events=events, enabled=body.enabled
        )
        if endpoint is None:
            raise NotFound("no such webhook")
    return WebhookOut(**_out(endpoint))


@router.delete("/v1/webhooks/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(webhook_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    endpoint = await _endpoint_of(ctx, caller, webhook_id, "admin")
    async with changing(ctx, caller, "webhook.delete", endpoint.organization_id, webhook_id) as conn:
        await endpoints_db.delete_endpoint(conn, webhook_id)
    return Response(status_code=204)


@router.post("/v1/webhooks/{webhook_id}/rotate-secret", response_model=SecretRotated)
async def rotate_secret(webhook_id: UUID, ctx: Ctx, caller: Caller) -> SecretRotated:
    endpoint = await _endpoint_of(ctx, caller, webhook_id, "admin")
    async with changing(ctx, caller, "webhook.rotate_secret", endpoint.organization_id, webhook_id) as conn:
        secret = await webhook_endpoints.rotate_secret(conn, ctx.master_key, webhook_id)
        if secret is None:
            raise NotFound("no such webhook")
    return SecretRotated(secret=secret)


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    webhook_id: UUID, ctx: Ctx, caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[DeliveryOut]:
    await _endpoint_of(ctx, caller, webhook_id, "read_only")
    return [DeliveryOut(**d) for d in await webhook_deliveries.list_deliveries(ctx.pool, webhook_id, limit)]


def _send_soon(ctx: Context) -> None:
    task = asyncio.create_task(send_due(ctx, None))
    _background.add(task)
    task.add_done_callback(_background.discard)


@router.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend", status_code=202, response_class=Response
)
async def resend_delivery(webhook_id: UUID, delivery_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    endpoint = await _endpoint_of(ctx, caller, webhook_id, "maintainer")
    if not endpoint.enabled:
        raise _disabled()
    details = {"delivery_id": delivery_id}
    async with changing(ctx, caller, "webhook.resend", endpoint.organization_id, webhook_id, details) as conn:
        outcome = await webhook_deliveries.resend(conn, webhook_id, delivery_id)
        if outcome == "not_found":
            raise NotFound("no such delivery")
        if outcome == "busy":  # disabled meanwhile, or an attempt is in flight
            raise Conflict("the delivery is being sent, or the endpoint was disabled; try again later")
    _send_soon(ctx)
    return Response(status_code=202)


@router.post("/v1/webhooks/{webhook_id}/test", status_code=202, response_model=TestSent)
async def send_test(webhook_id: UUID, ctx: Ctx, caller: Caller) -> TestSent:
    endpoint = await _endpoint_of(ctx, caller, webhook_id, "maintainer")
    if not endpoint.enabled:
        raise _disabled()
    payload = {
        "type": "webhook.test",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": {"project_id": str(endpoint.project_id), "message": "a test event from Remails"},
    }
    async with changing(ctx, caller, "webhook.test", endpoint.organization_id, webhook_id) as conn:
        delivery_id = await webhook_deliveries.enqueue_test(conn, webhook_id, payload)
        if delivery_id is None:  # disabled (or deleted) since it was read
            raise _disabled()
    _send_soon(ctx)
    return TestSent(delivery_id=delivery_id)


@router.get(
    "/v1/organizations/{org_id}/notifications", response_model=list[NotificationOut], tags=["organizations"]
)
async def list_notifications(
    org_id: UUID, ctx: Ctx, caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[NotificationOut]:
    """What the organization must know about, newest first (for instance a disabled webhook)."""
    await organization_of(ctx, caller, org_id)
    return [NotificationOut(**n) for n in await notifications.list_notifications(ctx.pool, org_id, limit)]
