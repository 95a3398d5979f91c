"""Who is calling: `Authorization: Bearer <token>` → a principal with an organization and role.

Roles are ordered read_only < maintainer < admin within one organization; the operator's
super-admin token (no organization) may do everything. Scope is decided in one place,
`Principal.require`: a resource of another organization — or, for a project-scoped key,
anything outside its project, including everything organization-wide — is answered 404,
never 403, so its existence does not leak.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from remails.context import Context
from remails.db.credentials import authenticate_api_key
from remails.db.orgs import get_organization
from remails.errors import AuthRequired, Forbidden, NotFound, RateLimited
from remails.rate_limit import TokenBuckets

__all__ = [
    "OPERATOR_ONLY",
    "Caller",
    "Ctx",
    "OrganizationFrozen",
    "Principal",
    "authenticate",
    "get_ctx",
    "principal_for",
    "refuse_if_frozen",
]

_RANK = {"read_only": 0, "maintainer": 1, "admin": 2}
_bearer = HTTPBearer(auto_error=False, description="an API key token, or the operator's admin token")

# OpenAPI extension on routes only the operator's token may use (others get 403); the
# cross-tenant test reads it, so such a route must say so.
OPERATOR_ONLY: dict[str, Any] = {"x-remails-operator-only": True}


def _projects(project: UUID | Iterable[UUID] | None) -> frozenset[UUID] | None:
    if project is None:
        return None
    return frozenset([project]) if isinstance(project, UUID) else frozenset(project)


@dataclass(frozen=True)
class Principal:
    key_id: UUID
    organization_id: UUID | None  # None: the operator's super-admin
    role: str
    project_id: UUID | None  # a key limited to one project
    client_ip: str | None = None  # where the request came from (for the audit log)
    user: bool = False  # a dashboard user acting with their role (key_id is the user's id)

    @property
    def super_admin(self) -> bool:
        return self.organization_id is None

    def require_super_admin(self) -> None:
        if not self.super_admin:
            raise Forbidden("only the operator's admin token may do this")

    def sees(self, org_id: UUID, project: UUID | Iterable[UUID] | None = None) -> bool:
        """May this caller see a resource of `org_id` belonging to `project` (one project, the
        projects it is attached to, or None: the organization as a whole)?"""
        if self.super_admin:
            return True
        if org_id != self.organization_id:
            return False
        if self.project_id is None:
            return True
        projects = _projects(project)
        return projects is not None and self.project_id in projects

    def require(
        self, org_id: UUID, role: str = "read_only", project: UUID | Iterable[UUID] | None = None
    ) -> None:
        """Raise NotFound for a resource the caller may not see (another organization's; for a
        project-scoped key, another project's or an organization-wide one), Forbidden for a
        role too low. A project-scoped key changes a resource only when it belongs to its
        project alone (a domain shared with other projects is theirs too)."""
        if self.super_admin:
            return
        if not self.sees(org_id, project):
            raise NotFound()
        if _RANK[self.role] < _RANK[role]:
            raise Forbidden(f"this needs the {role} role")
        if (
            self.project_id is not None
            and role != "read_only"
            and _projects(project) != frozenset([self.project_id])
        ):
            raise Forbidden("this is shared with other projects; use an organization-wide key")


def get_ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def request_client_ip(request: Request) -> str | None:
    """The client's address (as the trusted proxies forwarded it), or None when that is no
    address: uvicorn passes any forwarded text on, which the audit log's inet column and the
    throttles must not take."""
    host = request.client.host if request.client else None
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def principal_for(
    ctx: Context,
    buckets: TokenBuckets,
    authorization: str | None,
    *,
    client: str | None = None,
    failures: TokenBuckets | None = None,
) -> Principal:
    """Shared by the management API and the standalone send function. With `failures`, each
    lookup takes a token of the client address's bucket *before* the await (so concurrent
    guesses cannot all pass) and a good token gives it back: failed lookups are rate limited
    per client address, 429 above the rate."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthRequired("missing bearer token")
    attempt = f"ip:{client}" if failures is not None and client else None
    if failures is not None and attempt is not None:
        wait = failures.take(attempt, time.monotonic())
        if wait:
            raise RateLimited(wait)
    key = await authenticate_api_key(ctx.pool, token.strip())
    if key is None:
        raise AuthRequired("invalid token")
    if failures is not None and attempt is not None:
        failures.refund(attempt)
    principal = Principal(key.id, key.organization_id, key.role, key.project_id, client)
    if not principal.super_admin:
        wait = buckets.take(str(principal.organization_id), time.monotonic())
        if wait:
            raise RateLimited(wait)
    return principal


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    header = f"Bearer {credentials.credentials}" if credentials else None
    ctx = get_ctx(request)
    failures = getattr(request.app.state, "auth_failures", None)
    if failures is None:
        failures = TokenBuckets(
            ctx.settings.api_auth_failure_rate_per_second, ctx.settings.api_auth_failure_burst
        )
        request.app.state.auth_failures = failures
    client = request_client_ip(request)
    principal = await principal_for(
        ctx, request.app.state.rate_limits, header, client=client, failures=failures
    )
    if request.method not in _READS and principal.organization_id is not None:
        await refuse_if_frozen(ctx, principal.organization_id)
    return principal


_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class OrganizationFrozen(Forbidden):
    """A `full` block: the organization may read, not change anything (nor send)."""

    error_code = "organization_blocked"


async def refuse_if_frozen(ctx: Context, organization_id: UUID) -> None:
    org = await get_organization(ctx.pool, organization_id)
    if org is not None and org.block_status == "full_freeze":
        raise OrganizationFrozen("this organization is blocked: nothing can be changed, only read")


Ctx = Annotated[Context, Depends(get_ctx)]
Caller = Annotated[Principal, Depends(authenticate)]
