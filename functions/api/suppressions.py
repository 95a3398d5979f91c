"""An organization's suppression list: addresses that are never sent to."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from remails.db import suppressions
from remails.errors import NotFound
from remails.text import NO_NUL
from remails_functions.api.audit_log import changing
from remails_functions.api.auth import Caller, Ctx
from remails_functions.api.models import SuppressionCreate, SuppressionOut, SuppressionPage
from remails_functions.api.organizations import organization_of

router = APIRouter(tags=["suppressions"])


@router.get("/v1/organizations/{org_id}/suppressions", response_model=SuppressionPage)
async def list_suppressions(
    org_id: UUID,
    ctx: Ctx,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=320, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> SuppressionPage:
    await organization_of(ctx, caller, org_id)
    rows = await suppressions.list_suppressions(ctx.pool, org_id, after=cursor, limit=limit + 1)
    page = rows[:limit]
    return SuppressionPage(
        suppressions=[SuppressionOut(**asdict(s)) for s in page],
        next_cursor=page[-1].address if len(rows) > limit else None,
    )


@router.post("/v1/organizations/{org_id}/suppressions", status_code=201, response_model=SuppressionOut)
async def add_suppression(org_id: UUID, body: SuppressionCreate, ctx: Ctx, caller: Caller) -> SuppressionOut:
    await organization_of(ctx, caller, org_id, "maintainer")
    details = {"address": body.address.lower(), "reason": body.reason}
    async with changing(ctx, caller, "suppression.create", org_id, body.address.lower(), details) as conn:
        added = await suppressions.add_suppression(conn, org_id, body.address, body.reason)
    return SuppressionOut(**asdict(added))


@router.delete("/v1/organizations/{org_id}/suppressions/{address}", status_code=204, response_class=Response)
async def delete_suppression(
    org_id: UUID, address: Annotated[str, Path(max_length=320, pattern=NO_NUL)], ctx: Ctx, caller: Caller
) -> Response:
    await organization_of(ctx, caller, org_id, "maintainer")
    async with changing(ctx, caller, "suppression.delete", org_id, address.lower()) as conn:
        if not await suppressions.delete_suppression(conn, org_id, address):
            raise NotFound("the address is not suppressed")
    return Response(status_code=204)
