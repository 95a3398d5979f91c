"""HTML out: the Jinja2 templates, the page route class that turns errors into pages, and the
security headers every dashboard response carries."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remails.errors import RateLimited, RemailsError
from remails_functions.web.session import LoginRequired

__all__ = ["CSP", "PageRoute", "SecurityHeaders", "page", "redirect"]

CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"

_env = Environment(
    loader=PackageLoader("remails_functions.web", "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _env.get_template(template).render(request=request, **values)
    return HTMLResponse(html, status_code=status)


def redirect(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303)


def _problem(exc: Exception) -> tuple[str, str | None]:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        return str(first.get("msg", "invalid")).removeprefix("Value error, "), field
    if not isinstance(exc, RemailsError):
        raise exc
    return exc.message, exc.field


class PageRoute(APIRoute):
    """A dashboard route: no session → the sign-in page; a refusal → an HTML page with the same
    status the API would answer (404 for another tenant's pages, 403 for a role too low)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                return redirect(exc.to)
            except (RemailsError, ValidationError) as exc:
                status = exc.http_status if isinstance(exc, RemailsError) else 422
                if status >= 500:
                    raise
                message, field = _problem(exc)
                response = page(request, "error.html", status, message=message, field=field, code=status)
                if isinstance(exc, RateLimited):
                    response.headers["Retry-After"] = str(exc.retry_after)
                return response

        return run


class SecurityHeaders:
    """CSP `default-src 'self'` (no third-party origin can run or load anything), no framing, no
    sniffing, no referrer to other sites, and no caching of dashboard pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        dashboard = not path.startswith("/v1/") and path not in ("/healthz", "/openapi.json")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if dashboard and not path.startswith(("/static/", "/docs/assets/")):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)
