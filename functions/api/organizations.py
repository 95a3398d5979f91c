"""Organizations, their projects, IP pool assignment and statistics."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from functions.api.auth import OPERATOR_ONLY, Caller, Ctx, Principal
from functions.api.models import (
    IpPoolAssign,
    OrganizationCreate,
    OrganizationOut,
    OrganizationUpdate,
    ProjectCreate,
    ProjectOut,
    ProjectUpdate,
    StatisticsOut,
)
from remails.context import Context
from remails.db import egress, messages, orgs
from remails.errors import NotFound
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event

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
    org = await orgs.create_organization(ctx.pool, body.name, body.monthly_quota)
    return OrganizationOut(**asdict(org))


@router.get("/v1/organizations", response_model=list[OrganizationOut])
async def list_organizations(ctx: Ctx, caller: Caller) -> list[OrganizationOut]:
    found = await orgs.list_organizations(ctx.pool, caller.organization_id)
    return [OrganizationOut(**asdict(o)) for o in found if caller.sees(o.id)]


@router.get("/v1/organizations/{org_id}", response_model=OrganizationOut)
async def get_organization(org_id: UUID, ctx: Ctx, caller: Caller) -> OrganizationOut:
    return OrganizationOut(**asdict(await organization_of(ctx, caller, org_id)))


@router.patch("/v1/organizations/{org_id}", response_model=OrganizationOut)
async def update_organization(
    org_id: UUID, body: OrganizationUpdate, ctx: Ctx, caller: Caller
) -> OrganizationOut:
    await organization_of(ctx, caller, org_id, "admin")
    if body.monthly_quota is not None or body.block_status is not None:
        caller.require_super_admin()
    org = await orgs.update_organization(
        ctx.pool, org_id, name=body.name, monthly_quota=body.monthly_quota, block_status=body.block_status
    )
    if org is None:
        raise NotFound("no such organization")
    if body.block_status == "not_blocked":
        await _resume_released(ctx, org_id)
    return OrganizationOut(**asdict(org))


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
    await orgs.set_ip_pool(ctx.pool, org_id, body.ip_pool_id)
    return OrganizationOut(**asdict(await organization_of(ctx, caller, org_id)))


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
    project = await orgs.create_project(ctx.pool, org_id, body.name, body.retention_days)
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
    await project_of(ctx, caller, project_id, "admin")
    project = await orgs.update_project(
        ctx.pool, project_id, name=body.name, retention_days=body.retention_days
    )
    if project is None:
        raise NotFound("no such project")
    return ProjectOut(**asdict(project))


@router.delete("/v1/projects/{project_id}", status_code=204, response_class=Response, tags=["projects"])
async def delete_project(project_id: UUID, ctx: Ctx, caller: Caller) -> Response:
    await project_of(ctx, caller, project_id, "admin")
    await orgs.delete_project(ctx.pool, project_id)
    return Response(status_code=204)
