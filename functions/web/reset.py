"""Forgotten passwords: a one-time link by e-mail when system mail is on (otherwise the
operator's `remails user reset-password`). The answer never tells whether an account exists."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.responses import Response

from remails.accounts import hash_password, normalise_email, password_problem
from remails.crypto import generate_secret
from remails.db import audit, users
from remails.db.rows import transaction
from remails.errors import NotFound
from remails.log import log_event
from remails_functions.web.login import anonymous_page
from remails_functions.web.mail import send_system_mail
from remails_functions.web.render import PageRoute, redirect
from remails_functions.web.session import check_csrf, ctx_of, read_form, user_actor

__all__ = ["router"]

logger = logging.getLogger("remails.web")
router = APIRouter(route_class=PageRoute, include_in_schema=False)

RESET_SECONDS = 3600.0
RESETS_PER_HOUR = 3  # links mailed to one account per hour, at most


@router.get("/login/forgot")
async def forgot_form(request: Request) -> Response:
    return anonymous_page(request, "forgot.html", mail=ctx_of(request).settings.system_mail, email="")


@router.post("/login/forgot")
async def forgot(request: Request) -> Response:
    ctx = ctx_of(request)
    form = await read_form(request)
    check_csrf(request, form, None)
    email = normalise_email(form.text("email", max_length=254))
    user = await users.get_user_by_email(ctx.pool, email)
    if (
        ctx.settings.system_mail
        and user is not None
        and await users.count_recent_resets(ctx.pool, user.id, 3600) < RESETS_PER_HOUR
    ):
        token = generate_secret(24)
        async with transaction(ctx.pool) as conn:
            await users.create_password_reset(conn, user.id, token, RESET_SECONDS)
            # Asked by whoever knows the address: no actor id, the account is the target.
            actor = user_actor(request, None)
            await audit.record_for_user(conn, actor, "user.password_reset_requested", user.id, target=user.id)
        link = f"{ctx.settings.effective_public_url}/login/reset/{token}"
        text = (
            "Someone (hopefully you) asked to reset the password of your Remails account.\n\n"
            f"Choose a new password here within the hour:\n\n{link}\n\n"
            "If it was not you, ignore this message; your password stays as it is.\n"
        )
        await send_system_mail(ctx, user.email, "Reset your password", text, label="password_reset")
        log_event(logger, "password reset mailed", user_id=str(user.id))
    return anonymous_page(request, "forgot.html", mail=ctx.settings.system_mail, email=email, sent=True)


@router.get("/login/reset/{token}")
async def reset_form(token: str, request: Request) -> Response:
    if not await users.reset_is_open(ctx_of(request).pool, token[:100]):
        raise NotFound("this link has been used or has expired; ask for a new one")
    return anonymous_page(request, "reset.html", token=token)


@router.post("/login/reset/{token}")
async def reset(token: str, request: Request) -> Response:
    ctx = ctx_of(request)
    form = await read_form(request)
    check_csrf(request, form, None)
    password = form.get("password", "")
    problem = password_problem(password)
    if problem:
        return anonymous_page(request, "reset.html", 422, token=token, error=problem.capitalize() + ".")
    async with transaction(ctx.pool) as conn:
        user_id = await users.use_password_reset(conn, token[:100], hash_password(password))
        if user_id is None:
            raise NotFound("this link has been used or has expired; ask for a new one")
        await audit.record_for_user(conn, user_actor(request, user_id), "user.password_reset", user_id)
    log_event(logger, "password reset", user_id=str(user_id))
    return redirect("/login?reset=1")
