"""Organizations (the home page; the operator sees and blocks all), projects and members."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from remails.accounts import normalise_email
from remails.addresses import parse_mailbox
from remails.crypto import generate_secret
from remails.db import orgs, users
from remails.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from remails_functions.api import organizations as api_orgs
from remails_functions.api.auth import Principal
from remails_functions.api.models import OrganizationCreate, OrganizationUpdate, ProjectCreate
from remails_functions.web.mail import send_system_mail
from remails_functions.web.render import PageRoute, page, redirect
from remails_functions.web.scope import OrgScope, org_action, org_page, parse_id
from remails_functions.web.session import Form, check_csrf, client_ip, ctx_of, read_form, visitor

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

ROLES = ("read_only", "maintainer", "admin")
INVITATION_SECONDS = 7 * 86400.0


@router.get("/")
async def home(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    if who.user.operator:
        listed = [(o, "operator") for o in await orgs.list_organizations(ctx.pool)]
    else:
        mine = {m.organization_id: m.role for m in await users.list_memberships(ctx.pool, who.user.id)}
        found = [await orgs.get_organization(ctx.pool, org_id) for org_id in mine]
        listed = [(o, mine[o.id]) for o in found if o is not None]
    return page(request, "home.html", who=who, listed=listed, title="Organizations")


def _operator(request: Request, user: users.User) -> Principal:
    if not user.operator:
        raise Forbidden("only the operator may do this")
    return Principal(user.id, None, "admin", None, client_ip(request), user=True)


@router.post("/organizations")
async def create_organization(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    form = await read_form(request)
    check_csrf(request, form, who)
    caller = _operator(request, who.user)
    body = OrganizationCreate(name=form.text("name", max_length=100))
    org = await api_orgs.create_organization(body, ctx, caller)
    return redirect(f"/orgs/{org.id}/projects")


@router.post("/orgs/{org_id}/block")
async def block(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    body = OrganizationUpdate.model_validate({"block_status": form.text("block_status", max_length=20)})
    # The API decides: only the operator's principal may change the block status.
    await api_orgs.update_organization(org_id, body, scope.ctx, scope.caller)
    return redirect("/")


@router.get("/orgs/{org_id}")
async def organization(org_id: UUID, request: Request) -> Response:
    await org_page(request, org_id)
    return redirect(f"/orgs/{org_id}/projects")


@router.get("/orgs/{org_id}/projects")
async def projects(org_id: UUID, request: Request) -> Response:
    scope = await org_page(request, org_id)
    listed = await orgs.list_projects(scope.ctx.pool, org_id)
    return page(request, "projects.html", **scope.values("projects", projects=listed, title="Projects"))


@router.post("/orgs/{org_id}/projects")
async def create_project(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    body = ProjectCreate(name=form.text("name", max_length=100))
    try:
        await api_orgs.create_project(org_id, body, scope.ctx, scope.caller)
    except Conflict as exc:
        listed = await orgs.list_projects(scope.ctx.pool, org_id)
        values = scope.values("projects", projects=listed, title="Projects", error=exc.message)
        return page(request, "projects.html", 409, **values)
    return redirect(f"/orgs/{org_id}/projects")


@router.post("/orgs/{org_id}/projects/{project_id}/delete")
async def delete_project(org_id: UUID, project_id: UUID, request: Request) -> Response:
    scope, _ = await org_action(request, org_id, "admin")
    project = await api_orgs.project_of(scope.ctx, scope.caller, project_id, "admin")
    if project.organization_id != org_id:
        raise NotFound("no such project")
    await api_orgs.delete_project(project_id, scope.ctx, scope.caller)
    return redirect(f"/orgs/{org_id}/projects")


async def _members_page(request: Request, org_id: UUID, status: int = 200, **more: object) -> Response:
    scope = await org_page(request, org_id)
    members = await users.list_members(scope.ctx.pool, org_id)
    invitations = await users.list_invitations(scope.ctx.pool, org_id) if scope.may("admin") else []
    values = scope.values(
        "members", members=members, invitations=invitations, roles=ROLES, title="Members", **more
    )
    return page(request, "members.html", status, **values)


@router.get("/orgs/{org_id}/members")
async def members(org_id: UUID, request: Request) -> Response:
    return await _members_page(request, org_id)


@router.post("/orgs/{org_id}/members/invite")
async def invite(org_id: UUID, request: Request) -> Response:
    scope, form = await org_action(request, org_id, "admin")
    email = normalise_email(form.text("email", max_length=254))
    role = form.text("role", max_length=20)
    if role not in ROLES:
        raise InvalidInput("is not a role", field="role")
    if parse_mailbox(email) is None:  # one bare address: never a list, never a header break
        raise InvalidInput("is not one e-mail address (local@domain)", field="email")
    token = generate_secret(24)
    async with scope.changing("invitation.create", details={"email": email, "role": role}) as conn:
        wait = await users.invitation_wait(conn, org_id, scope.ctx.settings.invitations_per_day)
        if wait:
            raise RateLimited(wait)  # the transaction, and with it the audit entry, is undone
        await users.create_invitation(conn, org_id, email, role, token, INVITATION_SECONDS)
    link = f"{scope.ctx.settings.effective_public_url}/invite/{token}"
    text = (
        f"{scope.who.user.email} invites you to the organization {scope.org.name} on Remails,"
        f" as {role.replace('_', '-')}.\n\nAccept within seven days:\n\n{link}\n"
    )
    # A blocked organization sends nothing, not even through the operator's system mail: the
    # invitation is made and its link shown, not mailed.
    mailed = scope.org.block_status == "not_blocked" and await send_system_mail(
        scope.ctx, email, f"Join {scope.org.name}", text, label="invitation"
    )
    return await _members_page(request, org_id, 201, invite_link=link, invited=email, mailed=mailed)


async def _member_change(request: Request, org_id: UUID) -> tuple[OrgScope, Form, UUID, str]:
    """The admin's scope and form, and the member to change with their current role."""
    scope, form = await org_action(request, org_id, "admin")
    user_id = parse_id(form.get("user_id"), "user_id")
    current = await users.get_membership(scope.ctx.pool, user_id, org_id)
    if current is None:
        raise NotFound("no such member")
    return scope, form, user_id, current


@router.post("/orgs/{org_id}/members/role")
async def change_role(org_id: UUID, request: Request) -> Response:
    scope, form, user_id, current = await _member_change(request, org_id)
    role = form.text("role", max_length=20)
    if role not in ROLES:
        raise InvalidInput("is not a role", field="role")
    if current == "admin" and role != "admin" and await users.count_admins(scope.ctx.pool, org_id) <= 1:
        raise Conflict("the organization needs at least one admin")
    details = {"role": role, "was": current}
    async with scope.changing("member.update", user_id, details) as conn:
        await users.set_membership(conn, org_id, user_id, role)
    return redirect(f"/orgs/{org_id}/members")


@router.post("/orgs/{org_id}/members/remove")
async def remove_member(org_id: UUID, request: Request) -> Response:
    scope, _, user_id, current = await _member_change(request, org_id)
    if current == "admin" and await users.count_admins(scope.ctx.pool, org_id) <= 1:
        raise Conflict("the organization needs at least one admin")
    async with scope.changing("member.delete", user_id, {"role": current}) as conn:
        await users.delete_membership(conn, org_id, user_id)
    return redirect(f"/orgs/{org_id}/members")
