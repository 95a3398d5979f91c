"""The dashboard: server-rendered pages for people (accounts, organizations, projects, domains,
credentials, messages, webhooks, suppressions, statistics, members) and `/docs`, served by the
API process on the same listener.

`mount(app)` adds it to the API's FastAPI app; a user acts as the principal an API key of
their role would be, so the API's rules decide what the dashboard may do.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from remails_functions.web import account, activity, login, orgs, reset, sending
from remails_functions.web.docs import mount_docs
from remails_functions.web.render import SecurityHeaders

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    for module in (login, reset, account, orgs, sending, activity):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(packages=[("remails_functions.web", "static")]), name="static")
    mount_docs(app)
    app.add_middleware(SecurityHeaders)
