"""Organizations, their projects, IP pool assignment and statistics."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from remails.context import Context
from remails.db import audit, egress, messages, orgs
from remails.errors import InvalidInput, NotFound
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event
from remails_functions.api.audit_log import actor_of, changing
from remails_functions.api.auth import OPERATOR_ONLY, Caller, Ctx, Principal
from remails_functions.api.models import (
    IpPoolAssign,
    OrganizationCreate,
    OrganizationOut,
    OrganizationUpdate,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    QuotaOut,
    StatisticsOut,
)

router = APIRouter(tags=["organizations"])
logger = logging.getLogger("remails.api")


async def project_of(
    ctx: Context, caller: Principal, project_id: UUID, role: str = "read_only"
) -> orgs.Project:
    """The project, if the caller may see it with `role`; NotFound otherwise."""
    project = await orgs.get_project(ctx.pool, project_id)
    if project is None:
        raise NotFound("no such project")
    caller.require(project.organization_id, role, project.id)
    return project


async def organization_of(
    ctx: Context, caller: Principal, org_id: UUID, role: str = "read_only"
) -> orgs.Organization:
    """The organization as a whole: a project-scoped key gets NotFound, like another tenant."""
    caller.require(org_id, role)
    org = await orgs.get_organization(ctx.pool, org_id)
    if org is None:
        raise NotFound("no such organization")
    return org


@router.post(
    "/v1/organizations", status_code=201, response_model=OrganizationOut, openapi_extra=OPERATOR_ONLY
)
async def create_organization(body: OrganizationCreate, ctx: Ctx, caller: Caller) -> OrganizationOut:
    caller.require_super_admin()
    quota = body.monthly_quota if body.monthly_quota is not None else ctx.settings.default_monthly_quota
    async with ctx.pool.acquire() as conn, conn.transaction():
        org = await orgs.create_organization(conn, body.name, quota)
        await audit.record(
            conn,
            actor_of(caller),
            "organization.create",
            organization_id=org.id,
            target=org.id,
            details={"name": org.name, "monthly_quota": org.monthly_quota},
        )
    return organization_out(org)


@router.get("/v1/organizations", response_model=list[OrganizationOut])
async def list_organizations(ctx: Ctx, caller: Caller) -> list[OrganizationOut]:
    found = await orgs.list_organizations(ctx.pool, caller.organization_id)
    return [organization_out(o) for o in found if caller.sees(o.id)]


@router.get("/v1/organizations/{org_id}", response_model=OrganizationOut)
async def get_organization(org_id: UUID, ctx: Ctx, caller: Caller) -> OrganizationOut:
    return organization_out(await organization_of(ctx, caller, org_id))


@router.patch("/v1/organizations/{org_id}", response_model=OrganizationOut)
async def update_organization(
    org_id: UUID, body: OrganizationUpdate, ctx: Ctx, caller: Caller
) -> OrganizationOut:
    await organization_of(ctx, caller, org_id, "admin")
    if body.monthly_quota is not None or body.block_status is not None or body.block_reason is not None:
        caller.require_super_admin()
    if body.block_reason is not None and body.block_status is None:  # else logged, never stored
        raise InvalidInput("goes with block_status (the reason is set with the block)", field="block_reason")
    email = body.notification_email
    if "notification_email" in body.model_fields_set and email is None:
        email = ""  # an explicit null clears it
    changed = body.model_dump(exclude_unset=True)
    action = "organization.update"
    if body.block_status is not None:
        action = "organization.unblock" if body.block_status == "not_blocked" else "organization.block"
    async with changing(ctx, caller, action, org_id, org_id, changed) as conn:
        org = await orgs.update_organization(
            conn,
            org_id,
            name=body.name,
            monthly_quota=body.monthly_quota,
            block_status=body.block_status,
            notification_email=email,
        )
        if org is None:
            raise NotFound("no such organization")
        if body.block_status is not None:  # the reason goes with the block (and with it)
            await orgs.set_block_status(conn, org_id, body.block_status, body.block_reason)
            org = replace(org, block_reason=None if body.block_status == "not_blocked" else body.block_reason)
    if body.block_status == "not_blocked":
        await _resume_released(ctx, org_id)
    return organization_out(org)


def organization_out(org: orgs.Organization) -> OrganizationOut:
    """The organization with its quota as `{limit, used, resets_at}` (a period that started
    before this month counts as unused: the reset is lazy)."""
    now = datetime.now(UTC)
    month = now.date().replace(day=1)
    used = org.quota_used if org.quota_period_start >= month else 0
    next_month = (month + timedelta(days=32)).replace(day=1)
    resets_at = datetime(next_month.year, next_month.month, 1, tzinfo=UTC)
    quota = QuotaOut(limit=org.monthly_quota, used=used, resets_at=resets_at)
    return OrganizationOut(**asdict(org), quota=quota)


_RESUME_EVENTS = {
    "received": EventType.MESSAGE_RECEIVED,
    "validated": EventType.MESSAGE_VALIDATED,
    "admitted": EventType.MESSAGE_ADMITTED,
}
RELEASE_BATCH = 1000


async def _resume_released(ctx: Context, org_id: UUID) -> None:
    """Lifting a block resumes the messages it held, each where it stopped; whatever is beyond
    this batch (or whose event is lost) the sweep resumes."""
    for row in await messages.release_unblocked(ctx.pool, org_id, RELEASE_BATCH):
        data = MessageEvent(
            message_id=row["id"], organization_id=row["organization_id"], project_id=row["project_id"]
        )
        try:
            await ctx.publisher.publish(make_event(_RESUME_EVENTS[row["status"]], data))
        except Exception as exc:  # moved already; the sweep re-emits what this missed
            log_event(
                logger, "publish failed", logging.WARNING, message_id=row["id"], error=type(exc).__name__
            )


@router.put("/v1/organizations/{org_id}/ip-pool", response_model=OrganizationOut, openapi_extra=OPERATOR_ONLY)
async def assign_ip_pool(org_id: UUID, body: IpPoolAssign, ctx: Ctx, caller: Caller) -> OrganizationOut:
    caller.require_super_admin()
    await organization_of(ctx, caller, org_id)
    if body.ip_pool_id is not None and await egress.get_ip_pool(ctx.pool, body.ip_pool_id) is None:
        raise NotFound("no such IP pool", field="ip_pool_id")
    details = {"ip_pool_id": body.ip_pool_id}
    async with changing(ctx, caller, "organization.ip_pool", org_id, org_id, details) as conn:
        await orgs.set_ip_pool(conn, org_id, body.ip_pool_id)
    return organization_out(await organization_of(ctx, caller, org_id))


@router.get("/v1/organizations/{org_id}/statistics", response_model=StatisticsOut)
async def statistics(
    org_id: UUID, ctx: Ctx, caller: Caller, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> StatisticsOut:
    await organization_of(ctx, caller, org_id)
    since = datetime.now(UTC) - timedelta(days=days)
    rows = await messages.statistics(ctx.pool, org_id, since)
    return StatisticsOut.model_validate({"organization_id": org_id, "days": days, "rows": rows})


@router.post(
    "/v1/organizations/{org_id}/projects", status_code=201, response_model=ProjectOut, tags=["projects"]
)
async def create_project(org_id: UUID, body: ProjectCreate, ctx: Ctx, caller: Caller) -> ProjectOut:
    await organization_of(ctx, caller, org_id, "admin")
    async with ctx.pool.acquire() as conn, conn.transaction():
        project = await orgs.create_project(
            conn, org_id, body.name, body.retention_days, sandbox=body.sandbox
        )
        await audit.record(
            conn,
            actor_of(caller),
            "project.create",
            organization_id=org_id,
            target=project.id,
            details={"name": project.name, "sandbox": project.sandbox},
        )
    return ProjectOut(**asdict(project))


@router.get("/v1/organizations/{org_id}/projects", response_model=list[ProjectOut], tags=["projects"])
async def list_projects(org_id: UUID, ctx: Ctx, caller: Caller) -> list[ProjectOut]:
    await organization_of(ctx, caller, org_id)
    found = await orgs.list_projects(ctx.pool, org_id)
    return [ProjectOut(**asdict(p)) for p in found]


@router.get("/v1/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
async def get_project(project_id: UUID, ctx: Ctx, caller: Caller) -> ProjectOut:
    return ProjectOut(**asdict(await project_of(ctx, caller, project_id)))


@router.patch("/v1/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
async def update_project(project_id: UUID, body: ProjectUpdate, ctx: Ctx, caller: Caller) -> ProjectOut:
    before = await project_of(ctx, caller, project_id, "admin")
    changed = body.model_dump(exclude_unset=True)
    async with changing(ctx, caller, "project.update", before.organization_id, project_id, changed) as conn:
        project = await orgs.update_project(
            conn, project_id, name=body.name, retention_days=body.retention_days
        )
        if project is None:
            raise NotFound("no such project")
    return ProjectOut(**asdict(project))


@router.delete("/v1/projects/{project_id}", status_code=204, response_class=Response, tags=["projects"])
async def delete_project(project_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    project = await project_of(ctx, caller, project_id, "admin")
    async with changing(ctx, caller, "project.delete", project.organization_id, project_id) as conn:
        await orgs.delete_project(conn, project_id)
    return Response(status_code=204)
