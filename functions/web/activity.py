"""What happened: the message log and a message's page, webhooks and their deliveries,
suppressions, statistics (30 days by status) and quota use."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from remails.db import messages, orgs, webhook_deliveries
from remails.db import webhook_endpoints as endpoints_db
from remails.errors import InvalidInput, NotFound
from remails.message_headers import header_block
from remails.types import MessageStatus, WebhookEventType, literal_values
from remails_functions.api import messages as api_messages
from remails_functions.api import organizations as api_orgs
from remails_functions.api import suppressions as api_suppressions
from remails_functions.api import webhooks as api_webhooks
from remails_functions.api.models import SuppressionCreate
from remails_functions.api.webhooks import WebhookCreate
from remails_functions.web.render import PageRoute, page, redirect
from remails_functions.web.scope import OrgScope, org_action, org_page, parse_id

__all__ = ["router", "stacked_bars"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

STATUSES = literal_values(MessageStatus)
WEBHOOK_EVENTS = literal_values(WebhookEventType)
PAGE_SIZE = 50
HEAD_BYTES = 64 * 1024  # enough for any sane header block; the body is never shown


def _day(text: str | None, field: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput("is not a date (YYYY-MM-DD)", field=field) from None


@router.get("/orgs/{org_id}/messages")
async def message_list(org_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput("is not a message status", field="status")
    project_id = parse_id(q["project"], "project") if q.get("project") else None
    since, until = _day(q.get("from"), "from"), _day(q.get("to"), "to")
    listed = await api_messages.list_messages(
        scope.ctx,
        scope.caller,
        organization_id=org_id,
        project_id=project_id,
        status=status,  # type: ignore[arg-type]  # checked against the Literal above
        recipient=(q.get("recipient") or "").strip()[:320] or None,
        created_after=datetime.combine(since, time(), UTC) if since else None,
        created_before=datetime.combine(until + timedelta(days=1), time(), UTC) if until else None,
        cursor=(q.get("cursor") or None),
        limit=PAGE_SIZE,
    )
    projects = await orgs.list_projects(scope.ctx.pool, org_id)
    older = None
    if listed.next_cursor:
        older = str(request.url.include_query_params(cursor=listed.next_cursor))
    values = scope.values(
        "messages",
        page_=listed,
        older=older,
        projects=projects,
        names={p.id: p.name for p in projects},
        statuses=STATUSES,
        q=q,
        title="Messages",
    )
    return page(request, "messages.html", **values)


def _headers(head: bytes | None) -> list[tuple[str, str]]:
    if not head:
        return []
    parsed = BytesHeaderParser(policy=default_policy).parsebytes(header_block(head) + b"\r\n\r\n")
    return [(name, str(value)) for name, value in parsed.items()]


@router.get("/orgs/{org_id}/messages/{message_id}")
async def message_page(org_id: UUID, message_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    detail = await api_messages.get_message(message_id, scope.ctx, scope.caller)
    if detail.organization_id != org_id:
        raise NotFound("no such message")
    head = await messages.get_message_head(scope.ctx.pool, message_id, org_id, HEAD_BYTES)
    values = scope.values("messages", message=detail, headers=_headers(head), title="Message")
    return page(request, "message.html", **values)


@router.post("/orgs/{org_id}/messages/{message_id}/retry")
async def retry(org_id: UUID, message_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "maintainer")
    detail = await api_messages.get_message(message_id, scope.ctx, scope.caller)
    if detail.organization_id != org_id:
        raise NotFound("no such message")
    await api_messages.retry_message(message_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/messages/{message_id}")


async def _webhooks_page(request: Request, scope: OrgScope, status: int = 200, **more: Any) -> Response:
    projects = await orgs.list_projects(scope.ctx.pool, scope.org.id)
    listed = []
    for project in projects:
        for endpoint in await endpoints_db.list_endpoints(scope.ctx.pool, project.id):
            deliveries = await webhook_deliveries.list_deliveries(scope.ctx.pool, endpoint.id, 10)
            listed.append((project, endpoint, deliveries))
    values = scope.values(
        "webhooks", projects=projects, listed=listed, events=WEBHOOK_EVENTS, title="Webhooks", **more
    )
    return page(request, "webhooks.html", status, **values)


@router.get("/orgs/{org_id}/webhooks")
async def webhooks(org_id: UUID, request: Request) -> Response:
    return await _webhooks_page(request, await org_page(request, org_id))


@router.post("/orgs/{org_id}/webhooks")
async def create_webhook(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    project = await api_orgs.project_of(
        scope.ctx, scope.caller, parse_id(form.get("project_id"), "project_id")
    )
    if project.organization_id != org_id:
        raise NotFound("no such project", field="project_id")
    events = [e for e in WEBHOOK_EVENTS if form.get(f"event_{e}")]
    body = WebhookCreate.model_validate({"url": form.text("url", max_length=2000), "events": events})
    created = await api_webhooks.create_webhook(project.id, body, scope.ctx, scope.caller)
    return await _webhooks_page(request, scope, 201, created=created)


@router.post("/orgs/{org_id}/webhooks/{webhook_id}/delete")
async def delete_webhook(org_id: UUID, webhook_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "admin")
    endpoint = await endpoints_db.get_endpoint(scope.ctx.pool, webhook_id)
    if endpoint is None or endpoint.organization_id != org_id:
        raise NotFound("no such webhook")
    await api_webhooks.delete_webhook(webhook_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/webhooks")


@router.get("/orgs/{org_id}/suppressions")
async def suppressions(org_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    cursor = (request.query_params.get("cursor") or "")[:320] or None
    listed = await api_suppressions.list_suppressions(
        org_id, scope.ctx, scope.caller, cursor=cursor, limit=100
    )
    more = str(request.url.include_query_params(cursor=listed.next_cursor)) if listed.next_cursor else None
    values = scope.values("suppressions", listed=listed, more=more, title="Suppressions")
    return page(request, "suppressions.html", **values)


@router.post("/orgs/{org_id}/suppressions")
async def add_suppression(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "maintainer")
    try:
        body = SuppressionCreate(
            address=form.text("address", max_length=320),
            reason=form.text("reason", required=False, max_length=200) or "added in the dashboard",
        )
    except ValidationError:
        raise InvalidInput("is not an e-mail address", field="address") from None
    await api_suppressions.add_suppression(org_id, body, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/suppressions")


@router.post("/orgs/{org_id}/suppressions/delete")
async def delete_suppression(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "maintainer")
    await api_suppressions.delete_suppression(
        org_id, form.text("address", max_length=320), scope.ctx, scope.caller
    )
    return redirect(f"/orgs/{org_id}/suppressions")


CHART_STATUSES = ("delivered", "deferred", "bounced", "failed", "held", "rejected")


def stacked_bars(
    rows: list[dict[str, Any]], first_day: date, days: int, height: int = 160
) -> tuple[list[dict[str, Any]], int]:
    """Bars for an SVG chart: per day, one segment per status (others count as "in progress"),
    scaled so the busiest day fills `height`; and the busiest day's total."""
    per_day: dict[date, dict[str, int]] = {}
    for row in rows:
        status = row["status"] if row["status"] in CHART_STATUSES else "in_progress"
        counts = per_day.setdefault(row["day"], {})
        counts[status] = counts.get(status, 0) + int(row["count"])
    peak = max((sum(c.values()) for c in per_day.values()), default=0)
    bars = []
    for i in range(days):
        day = first_day + timedelta(days=i)
        counts = per_day.get(day, {})
        y = float(height)
        segments = []
        for status in (*CHART_STATUSES, "in_progress"):
            n = counts.get(status, 0)
            if n and peak:
                h = n * height / peak
                y -= h
                segments.append({"status": status, "count": n, "y": round(y, 2), "h": round(h, 2)})
        bars.append({"day": day, "total": sum(counts.values()), "segments": segments})
    return bars, peak


@router.get("/orgs/{org_id}/statistics")
async def statistics(org_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    days = 30
    stats = await api_orgs.statistics(org_id, scope.ctx, scope.caller, days=days)
    first = (datetime.now(UTC) - timedelta(days=days - 1)).date()
    rows = [r.model_dump() for r in stats.rows]
    bars, peak = stacked_bars(rows, first, days)
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["status"]] = totals.get(row["status"], 0) + row["count"]
    org = await orgs.get_organization(scope.ctx.pool, org_id)
    values = scope.values(
        "statistics",
        bars=bars,
        peak=peak,
        totals=sorted(totals.items()),
        chart_statuses=(*CHART_STATUSES, "in_progress"),
        quota=org,
        title="Statistics",
    )
    return page(request, "statistics.html", **values)
