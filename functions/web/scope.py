"""An organization's page or action as the signed-in user: session, CSRF, then the same
`organization_of` check the API makes for a key of the user's role."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from fastapi import Request

from remails.context import Context
from remails.db import orgs
from remails.db.rows import Executor
from remails.errors import Forbidden, NotFound
from remails_functions.api.audit_log import changing
from remails_functions.api.auth import Principal, refuse_if_frozen
from remails_functions.api.organizations import organization_of
from remails_functions.web.session import (
    Form,
    Visitor,
    check_csrf,
    client_ip,
    ctx_of,
    principal_in,
    read_form,
    visitor,
)

__all__ = ["OrgScope", "org_action", "org_page", "parse_id"]


@dataclass(frozen=True)
class OrgScope:
    ctx: Context
    who: Visitor
    caller: Principal
    org: orgs.Organization

    def may(self, role: str) -> bool:
        try:
            self.caller.require(self.org.id, role)
        except Forbidden:
            return False
        return True

    def changing(
        self, action: str, target: UUID | str | None = None, details: dict[str, Any] | None = None
    ) -> AbstractAsyncContextManager[Executor]:
        """A transaction for a change the dashboard makes itself, with its audit entry."""
        return changing(self.ctx, self.caller, action, self.org.id, target, details)

    def values(self, section: str, **more: Any) -> dict[str, Any]:
        """What every organization template gets."""
        return {"who": self.who, "org": self.org, "section": section, "may": self.may, **more}


async def org_page(request: Request, org_id: UUID, role: str = "read_only") -> OrgScope:
    ctx = ctx_of(request)
    who = await visitor(request)
    caller = await principal_in(ctx, who, org_id, client_ip(request))
    return OrgScope(ctx, who, caller, await organization_of(ctx, caller, org_id, role))


async def org_action(request: Request, org_id: UUID, role: str) -> tuple[OrgScope, Form]:
    """A state change: the CSRF token is checked before anything else is looked at; an
    organization under a `full` block changes nothing (403), as through the API — the
    operator excepted, who must be able to lift it."""
    ctx = ctx_of(request)
    who = await visitor(request)
    form = await read_form(request)
    check_csrf(request, form, who)
    caller = await principal_in(ctx, who, org_id, client_ip(request))
    scope = OrgScope(ctx, who, caller, await organization_of(ctx, caller, org_id, role))
    if not caller.super_admin:
        await refuse_if_frozen(ctx, org_id)
    return scope, form


def parse_id(text: str | None, field: str) -> UUID:
    try:
        return UUID(text or "")
    except ValueError:
        raise NotFound("no such item", field=field) from None
