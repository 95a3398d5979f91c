"""Webhook endpoints per project: create (secret shown once), list, update, delete, rotate the
secret, see recent deliveries, resend one, send a test event."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from functions.api.auth import Caller, Ctx, Principal
from functions.api.organizations import organization_of, project_of
from functions.webhooks import UnsafeTarget, check_target, send_due
from remails.context import Context
from remails.db import webhooks
from remails.errors import InvalidInput, NotFound
from remails.text import ClientInput
from remails.types import WebhookEventType
from remails.webhook_signing import generate_webhook_secret

router = APIRouter(tags=["webhooks"])

WebhookEvent = WebhookEventType
ROTATION_GRACE_SECONDS = 24 * 3600
_background: set[asyncio.Task[int]] = set()


class WebhookCreate(ClientInput):
    url: Annotated[str, Field(min_length=8, max_length=2000)]
    events: Annotated[list[WebhookEvent], Field(min_length=1, max_length=7)]


class WebhookUpdate(ClientInput):
    url: Annotated[str | None, Field(min_length=8, max_length=2000)] = None
    events: Annotated[list[WebhookEvent] | None, Field(min_length=1, max_length=7)] = None
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
    message: str
    subject_id: UUID | None
    created_at: datetime


def _out(endpoint: webhooks.Endpoint) -> dict[str, Any]:
    data = asdict(endpoint)
    data.pop("organization_id")
    return data


def _seal(ctx: Context, endpoint_id: UUID, secret: str) -> bytes:
    return ctx.master_key.seal(secret.encode(), context=f"webhook:{endpoint_id}")


async def _endpoint_of(ctx: Context, caller: Principal, webhook_id: UUID, role: str) -> webhooks.Endpoint:
    endpoint = await webhooks.get_endpoint(ctx.pool, webhook_id)
    if endpoint is None:
        raise NotFound("no such webhook")
    caller.require(endpoint.organization_id, role, endpoint.project_id)
    return endpoint


async def _safe_url(ctx: Context, url: str) -> None:
    try:
        await check_target(ctx.settings, url)
    except UnsafeTarget as exc:
        raise InvalidInput(str(exc), field="url") from None


@router.post("/v1/projects/{project_id}/webhooks", status_code=201, response_model=WebhookCreated)
async def create_webhook(project_id: UUID, body: WebhookCreate, ctx: Ctx, caller: Caller) -> WebhookCreated:
    await project_of(ctx, caller, project_id, "admin")
    await _safe_url(ctx, body.url)
    secret = generate_webhook_secret()
    endpoint_id = uuid4()  # chosen here: the sealed secret is bound to the endpoint's id
    endpoint = await webhooks.create_endpoint(
        ctx.pool,
        endpoint_id,
        project_id,
        body.url,
        [str(e) for e in body.events],
        _seal(ctx, endpoint_id, secret),
    )
    return WebhookCreated(**_out(endpoint), secret=secret)


@router.get("/v1/projects/{project_id}/webhooks", response_model=list[WebhookOut])
async def list_webhooks(project_id: UUID, ctx: Ctx, caller: Caller) -> list[WebhookOut]:
    await project_of(ctx, caller, project_id)
    return [WebhookOut(**_out(e)) for e in await webhooks.list_endpoints(ctx.pool, project_id)]


@router.get("/v1/webhooks/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: UUID, ctx: Ctx, caller: Caller) -> WebhookOut:
    return WebhookOut(**_out(await _endpoint_of(ctx, caller, webhook_id, "read_only")))


@router.patch("/v1/webhooks/{webhook_id}", response_model=WebhookOut)
async def update_webhook(webhook_id: UUID, body: WebhookUpdate, ctx: Ctx, caller: Caller) -> WebhookOut:
    await _endpoint_of(ctx, caller, webhook_id, "admin")
    if body.url is not None:
        await _safe_url(ctx, body.url)
    events = [str(e) for e in body.events] if body.events is not None else None
    endpoint = await webhooks.update_endpoint(
        ctx.pool, webhook_id, url=body.url, events=events, enabled=body.enabled
    )
    if endpoint is None:
        raise NotFound("no such webhook")
    return WebhookOut(**_out(endpoint))


@router.delete("/v1/webhooks/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(webhook_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    await _endpoint_of(ctx, caller, webhook_id, "admin")
    await webhooks.delete_endpoint(ctx.pool, webhook_id)
    return Response(status_code=204)


@router.post("/v1/webhooks/{webhook_id}/rotate-secret", response_model=SecretRotated)
async def rotate_secret(webhook_id: UUID, ctx: Ctx, caller: Caller) -> SecretRotated:
    await _endpoint_of(ctx, caller, webhook_id, "admin")
    secret = generate_webhook_secret()
    await webhooks.rotate_secret(ctx.pool, webhook_id, _seal(ctx, webhook_id, secret), ROTATION_GRACE_SECONDS)
    return SecretRotated(secret=secret)


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    webhook_id: UUID, ctx: Ctx, caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[DeliveryOut]:
    await _endpoint_of(ctx, caller, webhook_id, "read_only")
    return [DeliveryOut(**d) for d in await webhooks.list_deliveries(ctx.pool, webhook_id, limit)]


def _send_soon(ctx: Context) -> None:
    task = asyncio.create_task(send_due(ctx, None))
    _background.add(task)
    task.add_done_callback(_background.discard)


@router.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend", status_code=202, response_class=Response
)
async def resend_delivery(webhook_id: UUID, delivery_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    await _endpoint_of(ctx, caller, webhook_id, "maintainer")
    if not await webhooks.resend(ctx.pool, webhook_id, delivery_id):
        raise NotFound("no such delivery")
    _send_soon(ctx)
    return Response(status_code=202)


@router.post("/v1/webhooks/{webhook_id}/test", status_code=202, response_model=TestSent)
async def send_test(webhook_id: UUID, ctx: Ctx, caller: Caller) -> TestSent:
    endpoint = await _endpoint_of(ctx, caller, webhook_id, "maintainer")
    payload = {
        "type": "webhook.test",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": {"project_id": str(endpoint.project_id), "message": "a test event from Remails"},
    }
    delivery_id = await webhooks.enqueue_test(ctx.pool, webhook_id, payload)
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
    return [NotificationOut(**n) for n in await webhooks.list_notifications(ctx.pool, org_id, limit)]
