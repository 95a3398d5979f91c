"""The signed-in user's own account: password, two-factor (TOTP) with recovery codes."""

from __future__ import annotations

import segno
from fastapi import APIRouter, Request
from markupsafe import Markup
from starlette.responses import Response

from remails.accounts import (
    hash_password,
    new_recovery_codes,
    new_totp_secret,
    normalise_code,
    password_problem,
    totp_step,
    totp_uri,
    verify_password,
)
from remails.db import audit, sessions, users
from remails.db.rows import transaction
from remails.errors import Forbidden
from remails_functions.web.login import second_factor_ok, totp_context
from remails_functions.web.render import PageRoute, page, redirect
from remails_functions.web.session import (
    SESSION_COOKIE,
    check_csrf,
    ctx_of,
    read_form,
    set_cookie,
    user_actor,
    visitor,
)

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/account")
async def account(request: Request) -> Response:
    who = await visitor(request)
    return page(request, "account.html", who=who, title="Account")


@router.post("/account/password")
async def change_password(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    form = await read_form(request)
    check_csrf(request, form, who)
    if not verify_password(who.user.password_hash, form.get("current", "")):
        return page(request, "account.html", 403, who=who, error="The current password is wrong.")
    new = form.get("new", "")
    problem = password_problem(new)
    if problem:
        return page(request, "account.html", 422, who=who, error=problem.capitalize() + ".")
    async with transaction(ctx.pool) as conn:
        await users.set_password(conn, who.user.id, hash_password(new))  # ends every session
        _, token = await sessions.create_session(
            conn, who.user.id, second_factor=True, lifetime_seconds=ctx.settings.session_seconds
        )
        await audit.record_for_user(
            conn, user_actor(request, who.user.id), "user.password_change", who.user.id
        )
    response = redirect("/account?changed=1")
    set_cookie(request, response, SESSION_COOKIE, token, max_age=int(ctx.settings.session_seconds))
    return response


def totp_qr(uri: str) -> Markup:
    """The otpauth URI as an inline SVG QR code, for a phone's camera (dark on white, with the
    quiet zone scanners need). Only paths: nothing of the URI appears as text or markup."""
    svg = segno.make(uri, error="m").svg_inline(scale=4, border=4, light="#fff", dark="#000")
    return Markup(svg)  # noqa: S704 — segno's path data and our colours, no text of the URI


@router.post("/account/two-factor/start")
async def start_two_factor(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    check_csrf(request, await read_form(request), who)
    secret = new_totp_secret()
    uri = totp_uri(secret, who.user.email, "Remails")
    sealed = ctx.master_key.seal(secret.encode(), context=totp_context(who.user.id))
    async with transaction(ctx.pool) as conn:
        await users.set_totp_pending(conn, who.user.id, sealed)
        await audit.record_for_user(
            conn, user_actor(request, who.user.id), "user.two_factor_start", who.user.id
        )
    return page(
        request,
        "two_factor.html",
        who=who,
        title="Set up two-factor",
        secret=secret,
        uri=uri,
        qr=totp_qr(uri),
    )


@router.post("/account/two-factor/confirm")
async def confirm_two_factor(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    form = await read_form(request)
    check_csrf(request, form, who)
    pending = who.user.totp_pending_sealed
    if pending is None:
        return redirect("/account")
    secret = ctx.master_key.open(pending, context=totp_context(who.user.id)).decode()
    step = totp_step(secret, form.text("code", max_length=40), None)
    if step is None:
        return page(
            request,
            "two_factor.html",
            422,
            who=who,
            title="Set up two-factor",
            secret=secret,
            uri=(uri := totp_uri(secret, who.user.email, "Remails")),
            qr=totp_qr(uri),
            error="That code is not valid; check the time on your device and try again.",
        )
    codes = new_recovery_codes()
    # Stored as typed at sign-in (no dash, lower case), so `abcde-fghij` and `ABCDEFGHIJ` both work.
    async with transaction(ctx.pool) as conn:
        if not await users.enable_totp(conn, who.user.id, pending, step, [normalise_code(c) for c in codes]):
            return redirect("/account")
        await audit.record_for_user(
            conn, user_actor(request, who.user.id), "user.two_factor_enable", who.user.id
        )
    return page(request, "recovery_codes.html", who=who, title="Recovery codes", codes=codes)


@router.post("/account/two-factor/disable")
async def disable_two_factor(request: Request) -> Response:
    ctx = ctx_of(request)
    who = await visitor(request)
    form = await read_form(request)
    check_csrf(request, form, who)
    if not await second_factor_ok(ctx, who.user, form.text("code", max_length=40)):
        raise Forbidden("that code is not valid")
    async with transaction(ctx.pool) as conn:
        await users.disable_totp(conn, who.user.id)
        await audit.record_for_user(
            conn, user_actor(request, who.user.id), "user.two_factor_disable", who.user.id
        )
    return redirect("/account")
