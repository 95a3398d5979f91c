"""Who is at the browser: the session cookie → a user, and the user in an organization → the same
`Principal` an API key of that role would be, so authorization is decided by `Principal.require`.

Every state-changing request carries a CSRF token in its form: derived from the session token
once signed in, or equal to a pre-session cookie on the sign-in forms (double submit).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from uuid import UUID

from fastapi import Request
from starlette.responses import Response

from remails.accounts import csrf_matches, csrf_token
from remails.context import Context
from remails.crypto import generate_secret
from remails.db import audit, sessions, users
from remails.errors import Forbidden, InvalidInput, NotFound
from remails_functions.api.auth import Principal, request_client_ip

__all__ = [
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "Form",
    "LoginRequired",
    "Visitor",
    "check_csrf",
    "client_ip",
    "ctx_of",
    "pre_session_token",
    "principal_in",
    "read_form",
    "served_over_https",
    "set_cookie",
    "user_actor",
    "visitor",
]

SESSION_COOKIE = "remails_session"
PRE_COOKIE = "remails_pre"  # anonymous CSRF cookie for the sign-in forms
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 50


class LoginRequired(Exception):
    """No (complete) session: the dashboard sends the browser to the sign-in page."""

    def __init__(self, to: str = "/login") -> None:
        self.to = to


@dataclass(frozen=True)
class Visitor:
    user: users.User
    token: str  # the session token, from the cookie

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


class Form(dict[str, str]):
    """A submitted urlencoded form; the last value of each field."""

    def text(self, name: str, *, required: bool = True, max_length: int = 1000) -> str:
        value = self.get(name, "").strip()
        if required and not value:
            raise InvalidInput("is required", field=name)
        if len(value) > max_length:
            raise InvalidInput(f"may have at most {max_length} characters", field=name)
        return value


def ctx_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def read_form(request: Request) -> Form:
    """The urlencoded body, bounded in size and field count."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidInput("the form is too large")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the form could not be read") from None
    if any("\0" in k or "\0" in v for k, v in pairs):
        raise InvalidInput("the form contains a NUL character")
    return Form(pairs)


def check_csrf(request: Request, form: Form, visitor: Visitor | None) -> None:
    """403 unless the form carries this browser's token."""
    submitted = form.get("csrf")
    if visitor is not None:
        if csrf_matches(visitor.token, submitted):
            return
    else:
        pre = request.cookies.get(PRE_COOKIE)
        if pre and submitted and csrf_matches(pre, submitted):
            return
    raise Forbidden("the form has expired or did not come from this site; reload the page and try again")


def pre_session_token(request: Request, response: Response) -> str:
    """The CSRF token for an anonymous form, setting its cookie when the browser has none."""
    pre = request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) > 100:
        pre = generate_secret(24)
        set_cookie(request, response, PRE_COOKIE, pre, max_age=3600)
    return csrf_token(pre)


def served_over_https(request: Request) -> bool:
    """Over https here, or at the TLS-terminating proxy in front (X-Forwarded-Proto). Trusting
    the header is safe for this one use: a spoofed one only makes the cookie stricter."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int | None) -> None:
    """HttpOnly and SameSite=Lax always; Secure whenever the page was served over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=served_over_https(request),
    )


async def visitor(request: Request, *, second_factor_done: bool = True) -> Visitor:
    """The signed-in user; LoginRequired when there is no session (or, with
    `second_factor_done`, when its two-factor code is still due)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 100:
        raise LoginRequired(_login_target(request))
    ctx = ctx_of(request)
    session = await sessions.get_session(ctx.pool, token)
    if session is None:
        raise LoginRequired(_login_target(request))
    if second_factor_done and not session.second_factor:
        raise LoginRequired("/login/code")
    user = await users.get_user(ctx.pool, session.user_id)
    if user is None:
        raise LoginRequired()
    return Visitor(user, token)


def _login_target(request: Request) -> str:
    path = request.url.path
    if request.method != "GET" or path in ("/", "/login"):
        return "/login"
    return "/login?" + urllib.parse.urlencode({"next": path})


def client_ip(request: Request) -> str | None:
    """The browser's address, for the audit log and the sign-in throttle."""
    return request_client_ip(request)


def user_actor(request: Request, user_id: UUID | None) -> audit.Actor:
    """The audit log's actor for a person at this browser (None: a sign-in for no account)."""
    return audit.Actor("user", None if user_id is None else str(user_id), client_ip(request))


async def principal_in(ctx: Context, who: Visitor, org_id: UUID, client: str | None = None) -> Principal:
    """The user as a principal of `org_id` with their membership role (the operator as the
    super-admin); NotFound when they are no member, as for another tenant's API key. Its
    changes are logged as the user's, from `client`."""
    if who.user.operator:
        return Principal(who.user.id, None, "admin", None, client, user=True)
    role = await users.get_membership(ctx.pool, who.user.id, org_id)
    if role is None:
        raise NotFound("no such organization")
    return Principal(who.user.id, org_id, role, None, client, user=True)
