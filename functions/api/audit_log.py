"""The audit log through the API: `changing()` wraps a change and its entry in one transaction;
`GET /v1/organizations/{id}/audit-log` reads an organization's entries (admins only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from remails.context import Context
from remails.db import audit
from remails.db.audit import url_origin
from remails.db.rows import Executor
from remails.errors import InvalidInput
from remails_functions.api.auth import Caller, Ctx, Principal

__all__ = ["actor_of", "changing", "router", "url_origin"]

router = APIRouter(tags=["organizations"])


def actor_of(caller: Principal) -> audit.Actor:
    """A dashboard user acts as that user (the operator's too); the operator's admin token as
    the operator; any other key as itself."""
    if caller.user:
        return audit.Actor("user", str(caller.key_id), caller.client_ip)
    if caller.super_admin:
        return audit.Actor("operator", str(caller.key_id), caller.client_ip)
    return audit.Actor("api_key", str(caller.key_id), caller.client_ip)


@asynccontextmanager
async def changing(
    ctx: Context,
    caller: Principal,
    action: str,
    organization_id: UUID | None,
    target: UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> AsyncIterator[Executor]:
    """A connection in a transaction for the change; its audit entry is appended in the same
    transaction once the change succeeded (an exception rolls both back)."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        yield conn
        await audit.record(
            conn, actor_of(caller), action, organization_id=organization_id, target=target, details=details
        )


class AuditActorOut(BaseModel):
    kind: str
    id: str | None


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: AuditActorOut
    client_ip: str | None
    action: str
    target: str | None
    details: dict[str, Any]


class AuditPageOut(BaseModel):
    entries: list[AuditEntryOut]
    next_cursor: str | None


def _actor_filter(actor: str | None) -> tuple[str | None, str | None]:
    if actor is None:
        return None, None
    kind, _, actor_id = actor.partition(":")
    if kind not in ("api_key", "user", "operator"):
        raise InvalidInput("must be api_key[:ID], user[:ID] or operator[:ID]", field="actor")
    return kind, actor_id or None


@router.get("/v1/organizations/{org_id}/audit-log", response_model=AuditPageOut)
async def audit_log(
    org_id: UUID,
    ctx: Ctx,
    caller: Caller,
    cursor: str | None = None,
    action: Annotated[
        str | None, Query(max_length=100, description="an action, or a prefix like domain.")
    ] = None,
    actor: Annotated[
        str | None, Query(max_length=100, description="api_key[:ID], user[:ID], operator")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditPageOut:
    """Who changed what in the organization, newest first; follow `next_cursor` for older."""
    caller.require(org_id, "admin")
    kind, actor_id = _actor_filter(actor)
    try:
        page = await audit.list_entries(
            ctx.pool, org_id, limit=limit, cursor=cursor, action=action, actor_kind=kind, actor_id=actor_id
        )
    except ValueError:
        raise InvalidInput("is not a cursor this API returned", field="cursor") from None
    return AuditPageOut.model_validate(
        {"entries": [vars(e) for e in page.entries], "next_cursor": page.next_cursor}
    )
