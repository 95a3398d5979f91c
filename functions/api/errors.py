"""Errors as JSON `{"error": {"code", "message", "field"}}`, and the request body size limit."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remails.errors import RateLimited, RemailsError

__all__ = ["BodyLimit", "error_response", "install_error_handlers", "validation_response"]

logger = logging.getLogger("remails.api")


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "field": field}},
        status_code=status,
        headers=headers or None,
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def validation_response(errors: list[Any]) -> JSONResponse:
    """The first problem, naming its field (`to.0.email`, `headers`, `subject`)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", "the body is not valid JSON")
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    field = _field(first.get("loc", ()))
    # A model-level check names its field at the start of its message ("to: at least one …").
    if field is None and ": " in message and message.split(": ", 1)[0].isidentifier():
        field, message = message.split(": ", 1)
    return error_response(422, "invalid", message, field)


async def _remails_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RemailsError):  # registered for RemailsError only
        raise exc
    if exc.http_status >= 500:
        logger.error("request failed", exc_info=exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
    return error_response(exc.http_status, exc.error_code, exc.message, exc.field, **headers)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError | ValidationError):
        raise exc
    errors = list(exc.errors())
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if errors and tuple(errors[0].get("loc", ())) == ("body",) and not media_type.endswith("json"):
        # FastAPI reads a body as JSON only when it is labelled so; say that, not "a dictionary".
        return error_response(
            415, "unsupported_media_type", "send the body as JSON, with Content-Type: application/json"
        )
    return validation_response(errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HTTPException):
        raise exc
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}
    return error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RemailsError, _remails_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(ValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """Answer 413 when a request body is larger than `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"the body is larger than {self.limit} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
