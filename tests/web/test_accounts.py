"""Accounts over HTTP: session cookie flags, CSRF, throttling, two-factor, logout everywhere,
and that a user is exactly as powerful as an API key of their role in their organization."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import httpx
import pyotp
from starlette.requests import Request

from remails.config import Settings
from remails.db import Pool, orgs, users
from remails_functions.api.auth import request_client_ip
from tests.web.conftest import PASSWORD, Site, add_user, csrf_of, make_site


async def test_login_page_has_the_labelled_inputs(site: Site) -> None:
    page = await site.client.get("/login")
    assert page.status_code == 200
    assert '<label for="email">Email</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    assert ">Log in</button>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


async def test_session_cookie_is_httponly_samesite_and_secure_over_https(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    answer = await site.login("ann@acme.test")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("remails_session="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # plain http on loopback: a Secure cookie would never come back

    async with site.fresh("https://dash.test") as tls:
        form = await tls.get("/login")
        answer = await tls.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("remails_session="))
    assert "secure" in {p.strip().lower() for p in cookie.split(";")}

    # Behind a TLS-terminating proxy (the ingress), the proxy's X-Forwarded-Proto says https.
    async with site.fresh() as proxied:
        form = await proxied.get("/login")
        answer = await proxied.post(
            "/login",
            data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)},
            headers={"X-Forwarded-Proto": "https"},
        )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("remails_session="))
    assert "secure" in {p.strip().lower() for p in cookie.split(";")}


async def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    # The sign-in form itself: without the token (or with another browser's) → 403.
    answer = await site.client.post("/login", data={"email": "ann@acme.test", "password": PASSWORD})
    assert answer.status_code == 403
    assert "remails_session" not in answer.headers.get("set-cookie", "")
    await site.login("ann@acme.test")

    url = f"/orgs/{site.acme.org_id}/projects"
    page = await site.client.get(url)
    for data in ({"name": "no token"}, {"name": "bad token", "csrf": "0" * 64}):
        answer = await site.client.post(url, data=data)
        assert answer.status_code == 403, data
    assert [p.name for p in await orgs.list_projects(site.pool, site.acme.org_id)] == ["main"]

    answer = await site.client.post(url, data={"name": "with token", "csrf": csrf_of(page.text)})
    assert answer.status_code == 303
    assert "with token" in [p.name for p in await orgs.list_projects(site.pool, site.acme.org_id)]


async def test_ten_wrong_passwords_are_throttled(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    codes = [(await site.login("ann@acme.test", "wrong password!")).status_code for _ in range(10)]
    assert codes[:5] == [401] * 5  # REMAILS_LOGIN_MAX_FAILURES=5
    assert codes[5:] == [429] * 5
    # The organization's audit log has each counted failure and, once, the lock.
    actions = await site.pool.fetch(
        "SELECT action, details FROM audit_log WHERE organization_id = $1 AND action LIKE 'user.login%'"
        " ORDER BY id",
        site.acme.org_id,
    )
    assert [a["action"] for a in actions] == ["user.login_failed"] * 5 + ["user.login_throttled"]
    assert actions[-1]["details"] == {"failures": 5, "seconds": 900}
    # Now even the right password is refused, from this browser and from a fresh one.
    answer = await site.login("ann@acme.test")
    assert answer.status_code == 429 and "Too many failed attempts" in answer.text
    assert "remails_session" not in answer.headers.get("set-cookie", "")
    async with site.fresh() as other:
        form = await other.get("/login")
        answer = await other.post(
            "/login", data={"email": "ANN@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
    assert answer.status_code == 429


async def test_logout_everywhere_ends_every_session(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    async with site.fresh() as laptop:
        form = await laptop.get("/login")
        await laptop.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        assert (await laptop.get("/")).status_code == 200
        account = await site.client.get("/account")
        answer = await site.client.post("/logout/everywhere", data={"csrf": csrf_of(account.text)})
        assert answer.status_code == 303
        for client in (laptop, site.client):
            gone = await client.get(f"/orgs/{site.acme.org_id}/projects")
            assert gone.status_code == 303 and gone.headers["location"].startswith("/login")


async def _start_two_factor(site: Site) -> tuple[httpx.Response, pyotp.TOTP]:
    """ann@acme.test signed in, two-factor set-up started: the set-up page and its key."""
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    account = await site.client.get("/account")
    setup = await site.client.post("/account/two-factor/start", data={"csrf": csrf_of(account.text)})
    secret = setup.text.split('id="totp-secret">')[1].split("<")[0]
    return setup, pyotp.TOTP(secret)


async def test_two_factor_login_needs_a_fresh_code(site: Site) -> None:
    setup, totp = await _start_two_factor(site)
    previous = totp.at(time.time() - 30)  # a neighbouring step is accepted (clock drift)
    done = await site.client.post(
        "/account/two-factor/confirm", data={"csrf": csrf_of(setup.text), "code": previous}
    )
    assert done.status_code == 200
    recovery = done.text.split('id="recovery-codes" class="codes">')[1].split("</pre>")[0].split()
    assert len(recovery) == 10

    async with site.fresh() as other:
        form = await other.get("/login")
        answer = await other.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        assert answer.headers["location"].startswith("/login/code")
        # Password alone does not open the dashboard.
        assert (await other.get("/")).headers["location"] == "/login/code"
        page = await other.get("/login/code")
        assert '<label for="code">Code</label>' in page.text
        # The code used to confirm the set-up is spent: a replay is refused.
        refused = await other.post("/login/code", data={"csrf": csrf_of(page.text), "code": previous})
        assert refused.status_code == 401
        answer = await other.post("/login/code", data={"csrf": csrf_of(page.text), "code": totp.now()})
        assert answer.status_code == 303
        assert (await other.get("/")).status_code == 200

    async with site.fresh() as third:
        form = await third.get("/login")
        await third.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        page = await third.get("/login/code")
        ok = await third.post("/login/code", data={"csrf": csrf_of(page.text), "code": recovery[0]})
        assert ok.status_code == 303 and (await third.get("/")).status_code == 200

    async with site.fresh() as fourth:  # a recovery code works once
        form = await fourth.get("/login")
        await fourth.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        page = await fourth.get("/login/code")
        again = await fourth.post("/login/code", data={"csrf": csrf_of(page.text), "code": recovery[0]})
        assert again.status_code == 401


SECTIONS = [
    "projects",
    "domains",
    "messages",
    "api-keys",
    "smtp-credentials",
    "webhooks",
    "suppressions",
    "statistics",
    "members",
]


async def test_a_member_of_one_organization_cannot_reach_another(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    home = await site.client.get("/")
    assert "org acme.test" in home.text and "org other.test" not in home.text
    for section in SECTIONS:
        mine = await site.client.get(f"/orgs/{site.acme.org_id}/{section}")
        assert mine.status_code == 200, section
        theirs = await site.client.get(f"/orgs/{site.other.org_id}/{section}")
        assert theirs.status_code == 404, section
        assert "org other.test" not in theirs.text
    domain = await site.pool.fetchval("SELECT id FROM domains WHERE name = 'other.test'")
    # Their domain under my organization's URL is not found either.
    assert (await site.client.get(f"/orgs/{site.acme.org_id}/domains/{domain}")).status_code == 404
    page = await site.client.get(f"/orgs/{site.acme.org_id}/projects")
    answer = await site.client.post(
        f"/orgs/{site.other.org_id}/projects", data={"name": "intruder", "csrf": csrf_of(page.text)}
    )
    assert answer.status_code == 404
    assert [p.name for p in await orgs.list_projects(site.pool, site.other.org_id)] == ["main"]


async def test_a_read_only_member_cannot_change_anything(site: Site) -> None:
    await add_user(site.pool, "rita@acme.test", org=site.acme, role="read_only")
    await site.login("rita@acme.test")
    org = site.acme.org_id
    page = await site.client.get(f"/orgs/{org}/projects")
    assert "Create project" not in page.text
    token = csrf_of(page.text)
    domain = await site.pool.fetchval("SELECT id FROM domains WHERE name = 'acme.test'")
    attempts = {
        f"/orgs/{org}/projects": {"name": "nope"},
        f"/orgs/{org}/domains": {"domain": "new.acme.test", "project_id": str(site.acme.project_id)},
        f"/orgs/{org}/domains/{domain}/verify": {},
        f"/orgs/{org}/domains/{domain}/delete": {},
        f"/orgs/{org}/smtp-credentials": {"project_id": str(site.acme.project_id)},
        f"/orgs/{org}/api-keys": {"role": "admin"},
        f"/orgs/{org}/webhooks": {"project_id": str(site.acme.project_id), "url": "https://h.test/x"},
        f"/orgs/{org}/suppressions": {"address": "x@y.test"},
        f"/orgs/{org}/members/invite": {"email": "friend@acme.test", "role": "admin"},
        f"/orgs/{org}/projects/{site.acme.project_id}/delete": {},
    }
    before = await site.pool.fetchval(
        "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM domains)"
        " + (SELECT count(*) FROM smtp_credentials) + (SELECT count(*) FROM api_keys)"
        " + (SELECT count(*) FROM webhook_endpoints) + (SELECT count(*) FROM suppressions)"
        " + (SELECT count(*) FROM invitations)"
    )
    for url, data in attempts.items():
        answer = await site.client.post(url, data={**data, "csrf": token})
        assert answer.status_code == 403, url
    after = await site.pool.fetchval(
        "SELECT (SELECT count(*) FROM projects) + (SELECT count(*) FROM domains)"
        " + (SELECT count(*) FROM smtp_credentials) + (SELECT count(*) FROM api_keys)"
        " + (SELECT count(*) FROM webhook_endpoints) + (SELECT count(*) FROM suppressions)"
        " + (SELECT count(*) FROM invitations)"
    )
    assert after == before
    rita = await users.get_user_by_email(site.pool, "rita@acme.test")
    assert rita is not None
    role = await site.client.post(
        f"/orgs/{org}/members/role", data={"user_id": str(rita.id), "role": "admin", "csrf": token}
    )
    assert role.status_code == 403
    assert await users.get_membership(site.pool, rita.id, org) == "read_only"


async def test_an_invited_member_joins_with_the_invited_role(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    page = await site.client.get(f"/orgs/{site.acme.org_id}/members")
    invited = await site.client.post(
        f"/orgs/{site.acme.org_id}/members/invite",
        data={"email": "Bob@Acme.test", "role": "maintainer", "csrf": csrf_of(page.text)},
    )
    assert invited.status_code == 201
    link = invited.text.split('id="invite-link" class="wrap">')[1].split("<")[0]
    path = "/" + link.split("/", 3)[3]
    async with site.fresh() as bob:
        form = await bob.get(path)
        assert "Join org acme.test" in form.text
        joined = await bob.post(path, data={"password": "bobs long password", "csrf": csrf_of(form.text)})
        assert joined.status_code == 303
        assert (await bob.get(joined.headers["location"])).status_code == 200
        again = await bob.get(path)
        assert again.status_code == 404  # used once
    user = await users.get_user_by_email(site.pool, "bob@acme.test")
    assert user is not None
    assert await users.get_membership(site.pool, user.id, site.acme.org_id) == "maintainer"


async def test_the_operator_sees_every_organization_and_can_block_one(site: Site) -> None:
    await add_user(site.pool, "op@remails.test", operator=True)
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    page = await site.client.get("/")
    refused = await site.client.post(
        f"/orgs/{site.acme.org_id}/block", data={"block_status": "no_sending", "csrf": csrf_of(page.text)}
    )
    assert refused.status_code == 403  # an organization's admin may not block it

    async with site.fresh() as operator:
        form = await operator.get("/login")
        await operator.post(
            "/login", data={"email": "op@remails.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        home = await operator.get("/")
        assert "org acme.test" in home.text and "org other.test" in home.text
        answer = await operator.post(
            f"/orgs/{site.other.org_id}/block",
            data={"block_status": "no_sending", "csrf": csrf_of(home.text)},
        )
        assert answer.status_code == 303
    blocked = await orgs.get_organization(site.pool, site.other.org_id)
    assert blocked is not None and blocked.block_status == "no_sending"
    untouched = await orgs.get_organization(site.pool, site.acme.org_id)
    assert untouched is not None and untouched.block_status == "not_blocked"


async def test_signup_is_closed_unless_opened(site: Site, pool: Pool, settings: Settings) -> None:
    assert (await site.client.get("/signup")).status_code == 404
    form = await site.client.get("/login")
    assert "/signup" not in form.text
    closed = await site.client.post(
        "/signup", data={"email": "new@shop.test", "password": PASSWORD, "organization": "Shop"}
    )
    assert closed.status_code == 404
    assert await users.get_user_by_email(pool, "new@shop.test") is None

    opened = await make_site(pool, settings, (site.acme, site.other), signup="open")
    async with opened.client as client:
        form = await client.get("/signup")
        assert form.status_code == 200
        for label in ("Email", "Password", "Organization name"):
            assert f">{label}</label>" in form.text
        fields = {"email": "new@shop.test", "organization": "Shop", "csrf": csrf_of(form.text)}
        short = await client.post("/signup", data={**fields, "password": "short"})
        assert short.status_code == 422 and "at least 12 characters" in short.text
        made = await client.post("/signup", data={**fields, "password": PASSWORD})
        assert made.status_code == 303
        assert (await client.get(made.headers["location"])).status_code == 200
    user = await users.get_user_by_email(pool, "new@shop.test")
    assert user is not None
    [membership] = await users.list_memberships(pool, user.id)
    assert membership.organization_name == "Shop" and membership.role == "admin"
    org = await orgs.get_organization(pool, membership.organization_id)
    probe = await orgs.create_organization(pool, "probe")  # the default quota
    assert org is not None and org.monthly_quota == probe.monthly_quota


async def test_an_organization_creates_only_so_many_invitations_a_day(pool: Pool, settings: Settings) -> None:
    """Each invitation may mail a stranger through the operator's system mail: past the day's
    bound the dashboard answers 429 with Retry-After and stores nothing, also when the
    invitations come at once; another organization keeps its own allowance."""
    site = await make_site(pool, settings, invitations_per_day=3)
    try:
        await add_user(pool, "ann@acme.test", org=site.acme)
        await site.login("ann@acme.test")
        page = await site.client.get(f"/orgs/{site.acme.org_id}/members")
        csrf = csrf_of(page.text)

        async def invite(client: httpx.AsyncClient, org: UUID, n: int) -> httpx.Response:
            return await client.post(
                f"/orgs/{org}/members/invite",
                data={"email": f"friend{n}@elsewhere.test", "role": "read_only", "csrf": csrf},
            )

        # Not one address: refused before anything counts or is stored.
        for bad in ("a@x.test, b@y.test", "a@x.test\r\nBcc: c@z.test", "no-at-sign"):
            refused = await site.client.post(
                f"/orgs/{site.acme.org_id}/members/invite",
                data={"email": bad, "role": "read_only", "csrf": csrf},
            )
            assert refused.status_code == 422 and "is not one e-mail address" in refused.text, bad

        answers = await asyncio.gather(*(invite(site.client, site.acme.org_id, n) for n in range(6)))
        assert sorted(a.status_code for a in answers) == [201, 201, 201, 429, 429, 429]
        refused = next(a for a in answers if a.status_code == 429)
        # The oldest of the three leaves the 24-hour window in about a day.
        assert 86_000 <= int(refused.headers["retry-after"]) <= 86_400
        assert "too many requests" in refused.text
        stored = "SELECT count(*) FROM invitations WHERE organization_id = $1"
        assert await pool.fetchval(stored, site.acme.org_id) == 3
        audited = "SELECT count(*) FROM audit_log WHERE action = 'invitation.create' AND organization_id = $1"
        assert await pool.fetchval(audited, site.acme.org_id) == 3

        await add_user(pool, "olga@other.test", org=site.other)
        async with site.fresh() as olga:
            form = await olga.get("/login")
            await olga.post(
                "/login", data={"email": "olga@other.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
            )
            page = await olga.get(f"/orgs/{site.other.org_id}/members")
            csrf = csrf_of(page.text)
            assert (await invite(olga, site.other.org_id, 9)).status_code == 201

        # A day later the window has moved on.
        await pool.execute(
            "UPDATE invitations SET created_at = created_at - interval '1 day 1 minute'"
            " WHERE organization_id = $1",
            site.acme.org_id,
        )
        page = await site.client.get(f"/orgs/{site.acme.org_id}/members")
        csrf = csrf_of(page.text)
        assert (await invite(site.client, site.acme.org_id, 7)).status_code == 201
    finally:
        await site.client.aclose()


async def test_a_burst_of_guesses_gets_no_more_tries_than_one_at_a_time(site: Site) -> None:
    """Twenty wrong passwords at once: each attempt is counted before its password is checked,
    under a lock per address — five are checked, fifteen refused, the lock logged once."""
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    form = await site.client.get("/login")
    csrf = csrf_of(form.text)

    async def guess(n: int) -> int:
        answer = await site.client.post(
            "/login", data={"email": "ann@acme.test", "password": f"guess number {n}", "csrf": csrf}
        )
        return answer.status_code

    codes = await asyncio.gather(*(guess(n) for n in range(20)))
    assert sorted(codes) == [401] * 5 + [429] * 15
    actions = await site.pool.fetch(
        "SELECT action FROM audit_log WHERE organization_id = $1 AND action LIKE 'user.login%'",
        site.acme.org_id,
    )
    assert sorted(a["action"] for a in actions) == ["user.login_failed"] * 5 + ["user.login_throttled"]


async def test_the_right_password_does_not_reset_the_code_throttle(site: Site) -> None:
    """Someone who knows the password gets five wrong codes in the window, not five per
    sign-in: the password step withdraws only its own attempt."""
    setup, totp = await _start_two_factor(site)
    done = await site.client.post(
        "/account/two-factor/confirm", data={"csrf": csrf_of(setup.text), "code": totp.now()}
    )
    assert done.status_code == 200
    wrong = "000000" if totp.now() != "000000" else "111111"
    answers = []
    async with site.fresh() as thief:
        for _ in range(3):  # sign in with the password, try two codes, sign in again ...
            form = await thief.get("/login")
            signed = await thief.post(
                "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
            )
            answers.append(signed.status_code)
            if signed.status_code != 303:
                break
            page = await thief.get("/login/code")
            for _ in range(2):
                tried = await thief.post("/login/code", data={"csrf": csrf_of(page.text), "code": wrong})
                answers.append(tried.status_code)
    # Five wrong codes in all, then the account is locked — the third sign-in's second code
    # and any sign-in after it are refused.
    assert answers == [303, 401, 401, 303, 401, 401, 303, 401, 303], answers
    async with site.fresh() as again:
        form = await again.get("/login")
        locked = await again.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        assert locked.status_code == 429


def test_a_forwarded_text_that_is_no_address_is_no_client_address() -> None:
    """uvicorn hands on whatever a trusted proxy forwarded: only an address is taken."""

    def seen(host: str) -> str | None:
        return request_client_ip(Request({"type": "http", "client": (host, 0), "headers": []}))

    assert seen("203.0.113.9") == "203.0.113.9"
    assert seen("2001:db8::1") == "2001:db8::1"
    assert seen("not-an-ip") is None
    assert seen("203.0.113.9, 10.0.0.1") is None
