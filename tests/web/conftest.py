"""The dashboard: over httpx (ASGI) for the security checks, and in real headless Chromium
(Debian's `chromium`, driven by Playwright) against `remails up`'s runtime on loopback."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from remails.accounts import hash_password
from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, users
from remails_functions.api import create_app
from tests.e2e.conftest import World, world  # noqa: F401  (the fixture, for the browser tests)
from tests.factories import Tenant, make_tenant
from tests.support.recording import RecordingPublisher

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"


async def add_user(
    pool: Pool, email: str, *, org: Tenant | None = None, role: str = "admin", operator: bool = False
) -> users.User:
    user = await users.create_user(pool, email, hash_password(PASSWORD), operator=operator)
    if org is not None:
        await users.set_membership(pool, org.org_id, user.id, role)
    return user


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@dataclass
class Site:
    """The dashboard over httpx, with one organization and an admin of it."""

    client: httpx.AsyncClient
    pool: Pool
    settings: Settings
    acme: Tenant
    other: Tenant

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        form = await self.client.get("/login")
        return await self.client.post(
            "/login", data={"email": email, "password": password, "csrf": csrf_of(form.text)}
        )

    def fresh(self, base_url: str = "http://dash.test") -> httpx.AsyncClient:
        """Another browser: its own cookies."""
        return httpx.AsyncClient(transport=self.client._transport, base_url=base_url)


async def make_site(
    pool: Pool, settings: Settings, tenants: tuple[Tenant, Tenant] | None = None, **overrides: Any
) -> Site:
    settings = load_settings(**{**settings.model_dump(), "login_max_failures": 5, **overrides})
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://dash.test"
    )
    if tenants is None:
        tenants = (
            await make_tenant(pool, settings, "acme.test"),
            await make_tenant(pool, settings, "other.test"),
        )
    acme, other = tenants
    return Site(client, pool, settings, acme, other)


@pytest.fixture
async def site(pool: Pool, settings: Settings) -> AsyncIterator[Site]:
    made = await make_site(pool, settings)
    yield made
    await made.client.aclose()


@dataclass
class Watch:
    """What a page did that it must not: requests to another origin, console errors."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_request(request: Any) -> None:
            parts = urlsplit(request.url)
            if parts.scheme in ("data", "blob", "about"):
                return
            if f"{parts.scheme}://{parts.netloc}" != self.origin:
                self.foreign.append(request.url)

        def on_console(message: Any) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        page.on("request", on_request)
        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def assert_clean(self) -> None:
        assert self.foreign == [], f"requests to other origins: {self.foreign}"
        assert self.errors == [], f"console errors: {self.errors}"


@dataclass
class Browser:
    context: Any
    origin: str
    shots: Path
    watches: list[Watch] = field(default_factory=list)

    async def page(self) -> Any:
        page = await self.context.new_page()
        watch = Watch(self.origin)
        watch.attach(page)
        self.watches.append(watch)
        return page

    async def shot(self, page: Any, name: str) -> None:
        await page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Any]:
    """A launcher for real headless Chromium contexts, each with a new empty profile."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed (make debian-tools)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        contexts: list[Any] = []

        async def launch(origin: str, name: str = "browser", **options: Any) -> Browser:
            profile = tmp_path / f"profile-{name}"
            profile.mkdir()
            shots = tmp_path / "screenshots"
            shots.mkdir(exist_ok=True)
            context = await playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                base_url=origin,
                **options,
            )
            contexts.append(context)
            return Browser(context, origin, shots)

        yield launch
        for context in contexts:
            await context.close()
