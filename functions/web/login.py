"""Signing in and out: password, two-factor code, sign-up (when open), invitations."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import Response

from remails.accounts import (
    hash_password,
    normalise_code,
    normalise_email,
    password_problem,
    throttled,
    totp_step,
    verify_password,
)
from remails.context import Context
from remails.db import audit, orgs, sessions, users
from remails.db.rows import Executor, transaction
from remails.errors import InvalidInput, NotFound, RateLimited
from remails.log import log_event
from remails_functions.api.auth import refuse_if_frozen
from remails_functions.web.render import PageRoute, page, redirect
from remails_functions.web.session import (
    PRE_COOKIE,
    SESSION_COOKIE,
    LoginRequired,
    Visitor,
    check_csrf,
    client_ip,
    ctx_of,
    pre_session_token,
    read_form,
    set_cookie,
    user_actor,
    visitor,
)

__all__ = ["anonymous_page", "router", "totp_context"]

logger = logging.getLogger("remails.web")
router = APIRouter(route_class=PageRoute, include_in_schema=False)

_ADDRESS_FORM = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def totp_context(user_id: UUID) -> str:
    """Binds a sealed two-factor secret to its user."""
    return f"totp:{user_id}"


def _safe_next(target: str | None) -> str:
    """Only a path of this site (never `//host` or a scheme): no open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _client(request: Request) -> str:
    return client_ip(request) or "unknown"


async def _start_session(
    request: Request,
    ctx: Context,
    user: users.User,
    to: str,
    *,
    second_factor: bool,
    conn: Executor | None = None,
) -> Response:
    """A new session's cookie; `conn`: in the caller's transaction (with its audit entry)."""
    _, token = await sessions.create_session(
        conn or ctx.pool, user.id, second_factor=second_factor, lifetime_seconds=ctx.settings.session_seconds
    )
    response = redirect(to)
    set_cookie(request, response, SESSION_COOKIE, token, max_age=int(ctx.settings.session_seconds))
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


async def _reserve_attempt(request: Request, ctx: Context, email: str, user: users.User | None) -> datetime:
    """Count this attempt as a failure before its password or code is checked (withdrawn when
    it is right), under a lock per address: a burst of guesses gets no more tries than one at
    a time. RateLimited when the account or the client address is throttled; the first refusal
    in a window is the account's `user.login_throttled` entry (later ones write nothing)."""
    client = _client(request)
    window = ctx.settings.login_failure_window_seconds
    async with transaction(ctx.pool) as conn:
        await users.lock_login(conn, email)
        account, from_client = await users.count_login_failures(conn, email, client, window)
        if not throttled(account, from_client, ctx.settings.login_max_failures):
            return await users.record_login_failure(conn, email, client)
        if user is not None and not await audit.recent_user_entry(
            conn, user.id, "user.login_throttled", window
        ):
            details = {"failures": account, "seconds": int(window)}
            actor = user_actor(request, user.id)
            await audit.record_for_user(conn, actor, "user.login_throttled", user.id, details=details)
    log_event(logger, "login_throttled", client=client)
    raise RateLimited(int(window))


def anonymous_page(request: Request, template: str, status: int = 200, **values: object) -> Response:
    """A form shown before sign-in, with its CSRF token (and the cookie it is checked against)."""
    carrier = Response()
    pre = pre_session_token(request, carrier)
    html = page(request, template, status, pre=pre, **values)
    for key, value in carrier.headers.items():
        if key == "set-cookie":
            html.headers.append("set-cookie", value)
    return html


def _login_page(request: Request, status: int = 200, **values: object) -> Response:
    values.setdefault("email", "")
    values.setdefault("next", request.query_params.get("next", "/"))
    signup = ctx_of(request).settings.signup == "open"
    return anonymous_page(request, "login.html", status, signup=signup, **values)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    ctx = ctx_of(request)
    form = await read_form(request)
    check_csrf(request, form, None)
    email = normalise_email(form.text("email", max_length=254))
    password = form.get("password", "")
    client = _client(request)
    user = await users.get_user_by_email(ctx.pool, email)
    try:
        reserved = await _reserve_attempt(request, ctx, email, user)
    except RateLimited:
        return _login_page(
            request,
            429,
            email=email,
            error="Too many failed attempts. Wait a few minutes before trying again.",
        )
    if not verify_password(user.password_hash if user else None, password) or user is None:
        await _login_failed(request, ctx, email, user, "password")
        return _login_page(request, 401, email=email, error="Wrong email or password.")
    await sessions.purge_expired(ctx.pool)  # sign-ins are rare enough to carry the clean-up
    to = _safe_next(form.get("next"))
    if user.two_factor:  # signed in once the code is given, and logged then
        # Only this attempt is withdrawn: the account's failed codes still count until the
        # second factor is given (a known password must not reset the code throttle).
        await users.withdraw_login_failure(ctx.pool, email, client, reserved)
        return await _start_session(request, ctx, user, "/login/code?next=" + to, second_factor=False)
    await users.clear_login_failures(ctx.pool, email)
    log_event(logger, "login", user_id=str(user.id))
    async with transaction(ctx.pool) as conn:
        await audit.record_for_user(conn, user_actor(request, user.id), "user.login", user.id)
        return await _start_session(request, ctx, user, to, second_factor=True, conn=conn)


async def _login_failed(
    request: Request, ctx: Context, email: str, user: users.User | None, reason: str
) -> None:
    """Logged for the account's organizations (the attempted address only when it is no
    account's) — never the password; the throttle counted the attempt already."""
    client = _client(request)
    async with transaction(ctx.pool) as conn:
        details = {"reason": reason}
        if user is None:
            actor = user_actor(request, None)
            # What was typed is kept only when it has an address's form: a password typed into
            # the address field by mistake is a secret and never reaches the log.
            attempted = email if _ADDRESS_FORM.fullmatch(email) else None
            await audit.record(
                conn,
                actor,
                "user.login_failed",
                organization_id=None,
                details={**details, "email": attempted},
            )
        else:
            actor = user_actor(request, user.id)
            await audit.record_for_user(conn, actor, "user.login_failed", user.id, details=details)
    log_event(logger, "login_failed", client=client)


@router.get("/login/code")
async def code_form(request: Request) -> Response:
    who = await visitor(request, second_factor_done=False)
    return page(request, "code.html", csrf=who.csrf, next=request.query_params.get("next", "/"))


async def second_factor_ok(ctx: Context, user: users.User, code: str) -> bool:
    """A fresh TOTP code, or an unused recovery code (spent by this call)."""
    if user.totp_sealed is None:
        return False
    secret = ctx.master_key.open(user.totp_sealed, context=totp_context(user.id)).decode()
    step = totp_step(secret, code, user.totp_last_step)
    if step is not None:
        return await users.spend_totp_step(ctx.pool, user.id, step)
    return await users.spend_recovery_code(ctx.pool, user.id, normalise_code(code))


@router.post("/login/code")
async def code(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request, second_factor_done=False)
    form = await read_form(request)
    check_csrf(request, form, who)
    try:
        await _reserve_attempt(request, ctx, who.user.email, who.user)
    except RateLimited:
        await sessions.delete_session(ctx.pool, who.token)
        return redirect("/login")
    if not await second_factor_ok(ctx, who.user, form.text("code", max_length=40)):
        await _login_failed(request, ctx, who.user.email, who.user, "second_factor")
        return page(request, "code.html", 401, csrf=who.csrf, error="That code is not valid.")
    await users.clear_login_failures(ctx.pool, who.user.email)
    log_event(logger, "login", user_id=str(who.user.id), second_factor=True)
    to = _safe_next(request.query_params.get("next"))
    async with transaction(ctx.pool) as conn:
        # A new token once both factors are proven: the half-signed-in one is never promoted.
        await sessions.delete_session(conn, who.token)
        details = {"second_factor": True}
        await audit.record_for_user(
            conn, user_actor(request, who.user.id), "user.login", who.user.id, details=details
        )
        return await _start_session(request, ctx, who.user, to, second_factor=True, conn=conn)


@router.post("/logout")
async def logout(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request, second_factor_done=False)
    check_csrf(request, await read_form(request), who)
    async with transaction(ctx.pool) as conn:
        await sessions.delete_session(conn, who.token)
        await audit.record_for_user(conn, user_actor(request, who.user.id), "user.logout", who.user.id)
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/logout/everywhere")
async def logout_everywhere(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    check_csrf(request, await read_form(request), who)
    async with transaction(ctx.pool) as conn:
        ended = await sessions.delete_user_sessions(conn, who.user.id)
        await audit.record_for_user(
            conn,
            user_actor(request, who.user.id),
            "user.logout_everywhere",
            who.user.id,
            details={"sessions": ended},
        )
    log_event(logger, "logout_everywhere", user_id=str(who.user.id), sessions=ended)
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/signup")
async def signup_form(request: Request) -> Response:
    if ctx_of(request).settings.signup != "open":
        raise NotFound("sign-up is closed; ask the operator for an account")
    return anonymous_page(request, "signup.html", email="", organization="")


@router.post("/signup")
async def signup(request: Request) -> Response:
    ctx = ctx_of(request)
    if ctx.settings.signup != "open":
        raise NotFound("sign-up is closed; ask the operator for an account")
    form = await read_form(request)
    check_csrf(request, form, None)
    email = normalise_email(form.text("email", max_length=254))
    organization = form.text("organization", max_length=100)
    password = form.get("password", "")
    problem = password_problem(password) or (None if "@" in email else "enter an e-mail address")
    if problem is None and await users.get_user_by_email(ctx.pool, email) is not None:
        problem = "an account with this e-mail address exists; log in instead"
    if problem:
        return anonymous_page(
            request, "signup.html", 422, email=email, organization=organization, error=problem
        )
    async with transaction(ctx.pool) as conn:
        user = await users.create_user(conn, email, hash_password(password))
        org = await orgs.create_organization(conn, organization, ctx.settings.default_monthly_quota)
        await users.set_membership(conn, org.id, user.id, "admin")
        actor = user_actor(request, user.id)
        details = {"name": org.name, "monthly_quota": org.monthly_quota}
        await audit.record(
            conn, actor, "organization.create", organization_id=org.id, target=org.id, details=details
        )
        await audit.record(
            conn, actor, "user.signup", organization_id=org.id, target=user.id, details={"email": user.email}
        )
        response = await _start_session(
            request, ctx, user, f"/orgs/{org.id}/projects", second_factor=True, conn=conn
        )
    log_event(logger, "signup", user_id=str(user.id), organization_id=str(org.id))
    return response


async def _signed_in(request: Request) -> Visitor | None:
    try:
        return await visitor(request)
    except LoginRequired:
        return None


@router.get("/invite/{token}")
async def invitation(token: str, request: Request) -> Response:
    ctx = ctx_of(request)
    invite = await users.get_invitation(ctx.pool, token[:100])
    if invite is None:
        raise NotFound("this invitation has been used or has expired")
    org = await orgs.get_organization(ctx.pool, invite.organization_id)
    who = await _signed_in(request)
    existing = await users.get_user_by_email(ctx.pool, invite.email)
    return anonymous_page(
        request,
        "invite.html",
        invite=invite,
        invited_org=org,
        who=who,
        existing=existing is not None,
        token=token,
    )


@router.post("/invite/{token}")
async def accept(token: str, request: Request) -> Response:
    ctx = ctx_of(request)
    invite = await users.get_invitation(ctx.pool, token[:100])
    if invite is None:
        raise NotFound("this invitation has been used or has expired")
    form = await read_form(request)
    who = await _signed_in(request)
    check_csrf(request, form, who)
    await refuse_if_frozen(ctx, invite.organization_id)  # joining is a change of the organization
    if who is not None:
        async with transaction(ctx.pool) as conn:
            await _join(request, conn, token, invite, who.user)
        return redirect(f"/orgs/{invite.organization_id}/projects")
    if await users.get_user_by_email(ctx.pool, invite.email) is not None:
        return redirect(f"/login?next=/invite/{token}")
    password = form.get("password", "")
    problem = password_problem(password)
    if problem:
        raise InvalidInput(problem, field="password")
    async with transaction(ctx.pool) as conn:
        user = await users.create_user(conn, invite.email, hash_password(password))
        await _join(request, conn, token, invite, user, new_user=True)
        return await _start_session(
            request, ctx, user, f"/orgs/{invite.organization_id}/projects", second_factor=True, conn=conn
        )


async def _join(
    request: Request,
    conn: Executor,
    token: str,
    invite: users.Invitation,
    user: users.User,
    *,
    new_user: bool = False,
) -> None:
    """Spend the invitation for `user`, with its audit entry (NotFound when it is spent)."""
    if await users.accept_invitation(conn, token, user.id) is None:
        raise NotFound("this invitation has been used or has expired")
    details = {"email": invite.email, "role": invite.role, "new_user": new_user}
    await audit.record(
        conn,
        user_actor(request, user.id),
        "invitation.accept",
        organization_id=invite.organization_id,
        target=user.id,
        details=details,
    )
