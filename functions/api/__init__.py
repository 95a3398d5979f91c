"""The management API (FastAPI): OpenAPI 3.1 at /openapi.json, interactive docs at /docs.

`create_app(ctx)` builds it around a running context; `remails up` and `remails serve api`
serve it with uvicorn.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from remails.context import Context
from remails.db.operations import readiness_problem
from remails.rate_limit import TokenBuckets
from remails_functions.api import (
    audit_log,
    credentials,
    dmarc_reports,
    domains,
    ip_pools,
    messages,
    organizations,
    suppressions,
    webhooks,
)
from remails_functions.api.errors import BodyLimit, error_response, install_error_handlers
from remails_functions.web import mount as mount_dashboard

__all__ = ["create_app"]


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Remails",
        version="1",
        description="Send transactional mail and manage organizations, projects, domains and keys.",
        docs_url=None,  # the dashboard serves /docs from a package, not a CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.role_ready = lambda: True  # the runtime replaces it when it composes more roles
    app.state.rate_limits = TokenBuckets(ctx.settings.api_rate_per_second, ctx.settings.api_rate_burst)
    install_error_handlers(app)
    for module in (
        organizations,
        domains,
        dmarc_reports,
        credentials,
        messages,
        suppressions,
        ip_pools,
        webhooks,
        audit_log,
    ):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        """Alive: the process answers (a liveness probe; the database is /readyz's business)."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready for traffic: the database answers, its migrations are current, the role is up."""
        problem = await readiness_problem(ctx.pool, app.state.role_ready)
        if problem is not None:
            return error_response(503, "not_ready", problem)
        return JSONResponse({"status": "ready"})

    mount_dashboard(app)
    app.add_middleware(BodyLimit, limit=ctx.settings.api_max_body_bytes)
    return app
