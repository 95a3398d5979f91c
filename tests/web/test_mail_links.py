"""The links mailed by the dashboard (password reset, invitation) start at the configured public
address, never at the Host header of the request: anyone may ask for a reset of any address,
and a link built from their Host would carry the one-time token to a server they chose."""

from __future__ import annotations

import re

import httpx

from remails.config import Settings
from remails.db import Pool
from tests.factories import make_tenant
from tests.web.conftest import add_user, csrf_of, make_site

PUBLIC = "https://dash.remails.test"


async def _last_system_mail(pool: Pool, project_id: object) -> str:
    raw = await pool.fetchval(
        "SELECT raw FROM messages WHERE project_id = $1 ORDER BY created_at DESC LIMIT 1", project_id
    )
    assert raw is not None, "no system mail was stored"
    return bytes(raw).decode(errors="replace")


async def test_a_reset_link_starts_at_the_public_url_whatever_host_the_requester_named(
    pool: Pool, settings: Settings
) -> None:
    system = await make_tenant(pool, settings, "remails.test")
    site = await make_site(
        pool,
        settings,
        system_project_id=str(system.project_id),
        system_from="noreply@remails.test",
        public_url=PUBLIC,
    )
    try:
        await add_user(pool, "victim@dest.test")
        transport = site.client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as attacker:
            form = await attacker.get("/login/forgot")
            asked = await attacker.post(
                "/login/forgot", data={"email": "victim@dest.test", "csrf": csrf_of(form.text)}
            )
            assert asked.status_code == 200, asked.text
        text = await _last_system_mail(pool, system.project_id)
        links = re.findall(r"\S+/login/reset/\S+", text)
        assert links and all(link.startswith(f"{PUBLIC}/login/reset/") for link in links), text
        assert "evil.example" not in text
    finally:
        await site.client.aclose()


async def test_without_a_public_url_the_link_is_the_dashboards_own_listening_address(
    pool: Pool, settings: Settings
) -> None:
    system = await make_tenant(pool, settings, "remails.test")
    site = await make_site(
        pool, settings, system_project_id=str(system.project_id), system_from="noreply@remails.test"
    )
    try:
        await add_user(pool, "victim@dest.test")
        transport = site.client._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as attacker:
            form = await attacker.get("/login/forgot")
            await attacker.post(
                "/login/forgot", data={"email": "victim@dest.test", "csrf": csrf_of(form.text)}
            )
        text = await _last_system_mail(pool, system.project_id)
        host, port = site.settings.http_listen
        assert f"http://{host}:{port}/login/reset/" in text, text
        assert "evil.example" not in text
    finally:
        await site.client.aclose()
