"""The dashboard in real headless Chromium against the whole service (`remails up`'s runtime):
what a developer does on the first day, two-factor sign-in, a read-only member, another
organization's URLs, and `/docs` offline. Every page is watched: no request to another origin,
no console error. Screenshots go to the test's tmp folder (`screenshots/`)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pyotp
from playwright.async_api import expect

from remails.db import orgs
from remails.runtime import Runtime
from tests.e2e.conftest import World, message_status
from tests.factories import Tenant, store_message
from tests.support.wait import wait_until
from tests.web.conftest import PASSWORD, Browser, add_user
from tests.web.test_accounts import SECTIONS

Launch = Any


def origin_of(runtime: Runtime) -> str:
    assert runtime.api is not None
    host, port = runtime.api.address
    return f"http://{host}:{port}"


async def log_in(page: Any, email: str, password: str = PASSWORD) -> None:
    await page.goto("/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


def nav(page: Any, name: str) -> Any:
    return page.get_by_role("navigation", name="Organization").get_by_role("link", name=name, exact=True)


async def test_from_login_to_a_delivered_message(world: World, chromium: Launch) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    org = await orgs.create_organization(pool, "Bakery Ltd")
    await add_user(pool, "dev@bakery.test", org=_tenant(org.id))
    browser: Browser = await chromium(origin_of(runtime))
    page = await browser.page()

    await log_in(page, "dev@bakery.test")
    await expect(page.get_by_role("link", name="Bakery Ltd")).to_be_visible()
    await browser.shot(page, "organizations")
    await page.get_by_role("link", name="Bakery Ltd").click()
    await expect(page.get_by_text("No projects yet")).to_be_visible()

    await page.get_by_label("Project name").fill("Shop")
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_role("cell", name="Shop", exact=True)).to_be_visible()
    await browser.shot(page, "projects")

    await nav(page, "Domains").click()
    await expect(page.get_by_text("No domains yet")).to_be_visible()
    await page.get_by_label("Domain").fill("shop.test")
    await page.get_by_label("Project").select_option(label="Shop")
    await page.get_by_role("button", name="Add domain").click()
    await expect(page.get_by_role("heading", name="shop.test")).to_be_visible()
    await expect(page.get_by_text("Not verified yet.")).to_be_visible()
    rows = page.locator("table.records tbody tr")
    count = await rows.count()
    assert count >= 3  # DKIM, SPF, DMARC at least
    # Publish exactly what the table says, then let the live check find it.
    kinds = []
    for i in range(count):
        row = rows.nth(i)
        kind = (await row.locator("td").first.inner_text()).strip()
        name = (await row.locator("code").nth(0).inner_text()).strip()
        value = (await row.locator("code").nth(1).inner_text()).strip()
        kinds.append(kind)
        if kind == "MX":
            preference, host = value.split()
            world.dns.zone.mx(name, host.rstrip("."), int(preference))
        else:
            assert kind == "TXT"
            world.dns.zone.txt(name, value)
    assert kinds.count("TXT") >= 3
    await expect(page.get_by_text("not checked").first).to_be_visible()
    await page.get_by_role("button", name="Check DNS now").click()
    await expect(page.get_by_text("Verified", exact=True)).to_be_visible()
    assert await page.locator("table.records").get_by_text("found", exact=True).count() == count
    await browser.shot(page, "domain")

    await nav(page, "SMTP credentials").click()
    await page.get_by_label("Project").select_option(label="Shop")
    await page.get_by_role("button", name="Create credential").click()
    username = (await page.locator("#new-username").inner_text()).strip()
    password = (await page.locator("#new-password").inner_text()).strip()
    await browser.shot(page, "smtp-credentials")
    await page.reload()  # shown once: gone on the next view
    await expect(page.get_by_text(password)).to_have_count(0)

    project_id = await pool.fetchval("SELECT id FROM projects WHERE name = 'Shop'")
    tenant = Tenant(org.id, project_id, "shop.test", username, password)
    message_id = await world.submit(runtime, tenant, ["anna@dest.test"], subject="Your bread is ready")

    async def delivered() -> bool:
        return await message_status(pool, message_id) == "delivered"

    await wait_until(delivered, bound=30)
    assert len(sink.received) == 1

    await nav(page, "Messages").click()
    await page.get_by_label("Recipient").fill("anna@dest.test")
    await page.get_by_label("Status").select_option("delivered")
    await page.get_by_role("button", name="Filter").click()
    listed = page.locator("main table tbody tr")
    await expect(listed).to_have_count(1)
    await expect(listed.first).to_contain_text("anna@dest.test")
    await browser.shot(page, "messages")
    await page.get_by_label("Status").select_option("bounced")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_text("No message matches these filters.")).to_be_visible()
    await page.get_by_label("Status").select_option("delivered")
    await page.get_by_role("button", name="Filter").click()

    await listed.first.get_by_role("link").click()
    await expect(page.get_by_role("heading", name="Message", exact=True)).to_be_visible()
    assert message_id in page.url
    await expect(page.locator("dl.facts")).to_contain_text("delivered")
    await expect(page.get_by_role("cell", name="anna@dest.test")).to_be_visible()
    await expect(page.locator("table").nth(1)).to_contain_text("250")  # the attempt log
    await expect(page.locator("pre.headers")).to_contain_text("Subject: Your bread is ready")
    await browser.shot(page, "message")

    await nav(page, "Statistics").click()
    await expect(page.locator("svg.chart")).to_be_visible()
    await expect(page.get_by_text(re.compile(r"1 of \d+ messages used"))).to_be_visible()
    await browser.shot(page, "statistics")
    for name in ("API keys", "Webhooks", "Suppressions", "Members"):
        await nav(page, name).click()
        await expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
        await browser.shot(page, name.lower().replace(" ", "-"))
    for watch in browser.watches:
        watch.assert_clean()


def _tenant(org_id: Any) -> Tenant:
    return Tenant(org_id, org_id, "", "", "")  # add_user needs only the organization


async def test_log_in_with_two_factor(world: World, chromium: Launch, tmp_path: Path) -> None:
    runtime = await world.runtime()
    assert runtime.db is not None
    org = await orgs.create_organization(runtime.db.pool, "Bakery Ltd")
    await add_user(runtime.db.pool, "dev@bakery.test", org=_tenant(org.id))
    browser: Browser = await chromium(origin_of(runtime))
    page = await browser.page()
    await log_in(page, "dev@bakery.test")
    await page.get_by_role("link", name="dev@bakery.test").click()
    await page.get_by_role("button", name="Set up two-factor").click()
    secret = (await page.locator("#totp-secret").inner_text()).strip()
    # The QR code, as Chromium draws it, read by a real decoder (zbar): the same key, for this
    # account, from Remails.
    shot = tmp_path / "totp-qr.png"
    await page.locator("#totp-qr svg").screenshot(path=str(shot))
    zbar = await asyncio.create_subprocess_exec(
        "zbarimg", "--quiet", "--raw", str(shot), stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(zbar.communicate(), 30)
    assert zbar.returncode == 0, "zbarimg found no QR code in the screenshot"
    scanned = output.decode().strip()
    scanned_totp = pyotp.parse_uri(scanned)
    assert isinstance(scanned_totp, pyotp.TOTP)
    assert (scanned_totp.secret, scanned_totp.name, scanned_totp.issuer) == (
        secret,
        "dev@bakery.test",
        "Remails",
    )
    totp = pyotp.TOTP(secret)
    await page.get_by_label("Code").fill(totp.at(time.time() - 30))
    await page.get_by_role("button", name="Turn on two-factor").click()
    await expect(page.get_by_role("heading", name="Two-factor is on")).to_be_visible()
    await browser.shot(page, "recovery-codes")
    await page.get_by_role("button", name="Log out").click()

    await log_in(page, "dev@bakery.test")
    await expect(page).to_have_url(re.compile(r"/login/code"))
    await page.get_by_label("Code").fill("000000")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("That code is not valid.")
    await page.get_by_label("Code").fill(totp.now())
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("link", name="Bakery Ltd")).to_be_visible()
    for watch in browser.watches:
        assert watch.foreign == []
        # The wrong code was answered 401, which Chromium reports on the console; nothing else.
        assert all("401" in e for e in watch.errors), watch.errors


async def test_read_only_member_sees_no_controls_and_is_refused(world: World, chromium: Launch) -> None:
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant = await world.tenant(runtime, "bakery.test")
    await add_user(pool, "reader@bakery.test", org=tenant, role="read_only")
    browser: Browser = await chromium(origin_of(runtime))
    page = await browser.page()
    await log_in(page, "reader@bakery.test")
    await page.get_by_role("link", name="org bakery.test").click()
    sections = {
        "Projects": "Create project",
        "Domains": "Add domain",
        "SMTP credentials": "Create credential",
        "API keys": "Create API key",
        "Webhooks": "Add webhook",
        "Suppressions": "Suppress",
        "Members": "Invite",
    }
    for link, button in sections.items():
        await nav(page, link).click()
        await expect(page.get_by_role("heading", name=link, exact=True)).to_be_visible()
        await expect(page.get_by_role("button", name=button, exact=True)).to_have_count(0)
        await expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    await browser.shot(page, "read-only-members")
    # A form forged in the page, with the page's own CSRF token, is still refused by role.
    await nav(page, "Projects").click()
    status = await page.evaluate(
        """async (org) => {
            const csrf = document.querySelector('input[name=csrf]').value;
            const body = new URLSearchParams({csrf, name: 'sneaky'});
            const r = await fetch(`/orgs/${org}/projects`, {method: 'POST', body});
            return r.status;
        }""",
        str(tenant.org_id),
    )
    assert status == 403
    assert [p.name for p in await orgs.list_projects(pool, tenant.org_id)] == ["main"]
    for watch in browser.watches:
        assert watch.foreign == []
        assert all("403" in e for e in watch.errors), watch.errors


async def test_another_organizations_pages_are_not_found_by_url(world: World, chromium: Launch) -> None:
    runtime = await world.runtime()
    assert runtime.db is not None
    mine = await world.tenant(runtime, "bakery.test")
    theirs = await world.tenant(runtime, "butcher.test")
    await add_user(runtime.db.pool, "dev@bakery.test", org=mine)
    browser: Browser = await chromium(origin_of(runtime))
    page = await browser.page()
    await log_in(page, "dev@bakery.test")
    await expect(page.get_by_role("link", name="org bakery.test")).to_be_visible()
    await expect(page.get_by_role("link", name="org butcher.test")).to_have_count(0)
    for section in ("projects", "domains", "messages", "smtp-credentials", "members", "statistics"):
        response = await page.goto(f"/orgs/{theirs.org_id}/{section}")
        assert response is not None and response.status == 404, section
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        await expect(page.get_by_text("butcher")).to_have_count(0)
    await browser.shot(page, "not-found")
    for watch in browser.watches:
        assert watch.foreign == []
        assert all("404" in e for e in watch.errors), watch.errors


async def test_docs_render_with_no_network(world: World, chromium: Launch) -> None:
    runtime = await world.runtime()
    origin = origin_of(runtime)
    browser: Browser = await chromium(origin)
    page = await browser.page()
    # Anything not ours fails outright, so a CDN reference could not render silently.
    await page.route(re.compile(r"^(?!" + re.escape(origin) + ").*"), lambda route: route.abort())
    await page.goto("/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Remails")
    await expect(page.get_by_text("/v1/organizations", exact=True).first).to_be_visible()
    await browser.shot(page, "docs")
    for watch in browser.watches:
        watch.assert_clean()


async def test_usable_on_a_phone_and_every_input_is_labelled(world: World, chromium: Launch) -> None:
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant = await world.tenant(runtime, "bakery.test")
    message_id = await store_message(pool, tenant, ["anna@dest.test"])
    domain_id = await pool.fetchval("SELECT id FROM domains WHERE name = 'bakery.test'")
    await add_user(pool, "dev@bakery.test", org=tenant)
    phone = {"width": 390, "height": 844}
    browser: Browser = await chromium(origin_of(runtime), viewport=phone, is_mobile=True, has_touch=True)
    page = await browser.page()
    await log_in(page, "dev@bakery.test")
    org = f"/orgs/{tenant.org_id}"
    paths = ["/", "/account", f"{org}/domains/{domain_id}", f"{org}/messages/{message_id}"]
    paths += [f"{org}/{section}" for section in SECTIONS]
    for path in paths:
        await page.goto(path)
        # No sideways scrolling of the page itself (wide tables scroll in their own box).
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= phone["width"], (path, width)
        unlabelled = await page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                 .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))
                 .map(e => e.name)"""
        )
        assert unlabelled == [], (path, unlabelled)
        await browser.shot(page, "phone" + path.replace("/", "-").replace(str(tenant.org_id), "org"))
    await page.goto("/login")  # signed in: the sign-in form still has its labels
    for watch in browser.watches:
        watch.assert_clean()
