"""Who is calling: `Authorization: Bearer <token>` → a principal with an organization and role.

Roles are ordered read_only < maintainer < admin within one organization; the operator's
super-admin token (no organization) may do everything. A resource of another organization is
answered 404, never 403, so its existence does not leak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remails.context import Context
from remails.db.credentials import authenticate_api_key
from remails.errors import AuthRequired, Forbidden, NotFound, RateLimited
from remails.rate_limit import TokenBuckets

__all__ = ["Caller", "Ctx", "Principal", "authenticate", "get_ctx", "principal_for"]

_RANK = {"read_only": 0, "maintainer": 1, "admin": 2}
_bearer = HTTPBearer(auto_error=False, description="an API key token, or the operator's admin token")


@dataclass(frozen=True)
class Principal:
    key_id: UUID
    organization_id: UUID | None  # None: the operator's super-admin
    role: str
    project_id: UUID | None  # a key limited to one project

    @property
    def super_admin(self) -> bool:
        return self.organization_id is None

    def require_super_admin(self) -> None:
        if not self.super_admin:
            raise Forbidden("only the operator's admin token may do this")

    def require(self, org_id: UUID, role: str = "read_only", project_id: UUID | None = None) -> None:
        """Raise NotFound for another organization's (or project's) resource, Forbidden for a role
        too low within one's own."""
        if self.super_admin:
            return
        if org_id != self.organization_id:
            raise NotFound()
        if self.project_id is not None and project_id is not None and project_id != self.project_id:
            raise NotFound()
        if _RANK[self.role] < _RANK[role]:
            raise Forbidden(f"this needs the {role} role")


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def principal_for(ctx: Context, buckets: TokenBuckets, authorization: str | None) -> Principal:
    """Shared by the management API and the standalone send function."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthRequired("missing bearer token")
    key = await authenticate_api_key(ctx.pool, token.strip())
    if key is None:
        raise AuthRequired("invalid token")
    principal = Principal(key.id, key.organization_id, key.role, key.project_id)
    if not principal.super_admin:
        wait = buckets.take(str(principal.organization_id), time.monotonic())
        if wait:
            raise RateLimited(wait)
    return principal


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    header = f"Bearer {credentials.credentials}" if credentials else None
    return await principal_for(get_ctx(request), request.app.state.rate_limits, header)


Ctx = Annotated[Context, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(authenticate)]
