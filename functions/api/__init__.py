"""The management API (FastAPI): OpenAPI 3.1 at /openapi.json, interactive docs at /docs.

`create_app(ctx)` builds it around a running context; `remails up` and `remails serve api`
serve it with uvicorn.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from functions.api import credentials, domains, ip_pools, messages, organizations, suppressions, webhooks
from functions.api.errors import BodyLimit, error_response, install_error_handlers
from remails.context import Context
from remails.rate_limit import TokenBuckets

__all__ = ["create_app"]


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Remails",
        version="1",
        description="Send transactional mail and manage organizations, projects, domains and keys.",
    )
    app.state.ctx = ctx
    app.state.rate_limits = TokenBuckets(ctx.settings.api_rate_per_second, ctx.settings.api_rate_burst)
    install_error_handlers(app)
    for module in (organizations, domains, credentials, messages, suppressions, ip_pools, webhooks):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        try:
            await ctx.pool.fetchval("SELECT 1")
        except Exception:
            return error_response(503, "unavailable", "the database is not reachable")
        return JSONResponse({"status": "ok"})

    app.add_middleware(BodyLimit, limit=ctx.settings.api_max_body_bytes)
    return app
