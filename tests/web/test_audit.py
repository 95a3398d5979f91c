"""The dashboard's audit trail: every change a person makes there is logged as that user, from
their address, in the change's transaction; sign-ins, failed sign-ins (never the password) and
sign-outs too; and an organization under a `full` block can be looked at, not changed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pyotp
import pytest

from remails.config import Settings
from remails.db import Pool, orgs, users
from tests.factories import make_tenant
from tests.web.conftest import PASSWORD, Site, add_user, csrf_of, make_site

NEW_PASSWORD = "another horse battery staple"


@pytest.fixture
async def hooks_site(pool: Pool, settings: Settings) -> AsyncIterator[Site]:
    made = await make_site(pool, settings, webhooks_allow_private=True)
    yield made
    await made.client.aclose()


async def _entries(pool: Pool, after: int = 0) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, organization_id, action, actor_kind, actor_id, host(client_ip) AS client_ip, target,"
        " details FROM audit_log WHERE id > $1 ORDER BY id",
        after,
    )
    return [dict(r) for r in rows]


async def _last_id(pool: Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM audit_log"))


class Walk:
    """Posts a dashboard form and returns the audit entries it wrote."""

    def __init__(self, site: Site, user_id: UUID) -> None:
        self.site = site
        self.user_id = str(user_id)

    async def post(
        self, url: str, data: dict[str, str], *, page: str, status: int = 303
    ) -> list[dict[str, Any]]:
        mark = await _last_id(self.site.pool)
        form = await self.site.client.get(page)
        answer = await self.site.client.post(url, data={**data, "csrf": csrf_of(form.text)})
        assert answer.status_code == status, (url, answer.status_code, answer.text[:500])
        self.last = answer
        return await _entries(self.site.pool, mark)

    def one(self, entries: list[dict[str, Any]], action: str, org_id: UUID | None) -> dict[str, Any]:
        """The change wrote exactly one entry: this action, by this user, from loopback."""
        assert [e["action"] for e in entries] == [action], entries
        entry = entries[0]
        assert entry["actor_kind"] == "user" and entry["actor_id"] == self.user_id, entry
        assert entry["client_ip"] == "127.0.0.1"  # httpx's ASGI client address
        assert entry["organization_id"] == org_id
        return entry


async def test_each_dashboard_change_is_logged_as_the_user_from_their_address(hooks_site: Site) -> None:
    site = hooks_site
    org = site.acme.org_id
    ann = await add_user(site.pool, "ann@acme.test", org=site.acme)
    bob = await add_user(site.pool, "bob@acme.test", org=site.acme, role="read_only")
    walk = Walk(site, ann.id)

    # A failed sign-in is logged for the account's organization, without the password.
    mark = await _last_id(site.pool)
    assert (await site.login("ann@acme.test", "wrong password, typed")).status_code == 401
    failed = walk.one(await _entries(site.pool, mark), "user.login_failed", org)
    assert failed["details"] == {"reason": "password"}
    # An address that is no account's: no organization to tell, the address kept, no password.
    mark = await _last_id(site.pool)
    assert (await site.login("nobody@acme.test", "guessed password 1")).status_code == 401
    [unknown] = await _entries(site.pool, mark)
    assert (unknown["action"], unknown["actor_id"], unknown["organization_id"]) == (
        "user.login_failed",
        None,
        None,
    )
    assert unknown["details"] == {"reason": "password", "email": "nobody@acme.test"}
    logged = json.dumps([failed, unknown], default=str)
    assert "wrong password" not in logged and "guessed password" not in logged

    mark = await _last_id(site.pool)
    assert (await site.login("ann@acme.test")).status_code == 303
    walk.one(await _entries(site.pool, mark), "user.login", org)

    projects = f"/orgs/{org}/projects"
    made = walk.one(await walk.post(projects, {"name": "shop"}, page=projects), "project.create", org)
    shop = next(p for p in await orgs.list_projects(site.pool, org) if p.name == "shop")
    assert made["target"] == str(shop.id)

    domains = f"/orgs/{org}/domains"
    added = await walk.post(domains, {"domain": "Audit-Walk.test", "project_id": str(shop.id)}, page=domains)
    entry = walk.one(added, "domain.create", org)
    domain_id = UUID(entry["target"])
    assert entry["details"]["domain"] == "audit-walk.test"
    page = f"{domains}/{domain_id}"
    verified = walk.one(await walk.post(f"{page}/verify", {}, page=page), "domain.verify", org)
    assert verified["target"] == str(domain_id) and verified["details"]["verified"] is False

    creds = f"/orgs/{org}/smtp-credentials"
    entry = walk.one(
        await walk.post(creds, {"project_id": str(shop.id)}, page=creds, status=201),
        "smtp_credential.create",
        org,
    )
    password = re.search(r'id="new-password"[^>]*>([^<]+)<', walk.last.text)
    credential_id = entry["target"]
    walk.one(
        await walk.post(f"{creds}/{credential_id}/delete", {}, page=creds), "smtp_credential.delete", org
    )

    keys = f"/orgs/{org}/api-keys"
    entry = walk.one(
        await walk.post(keys, {"role": "read_only", "description": "ci"}, page=keys, status=201),
        "api_key.create",
        org,
    )
    token = re.search(r"rmk_[0-9a-f]+\.[A-Za-z0-9_\-]+", walk.last.text)
    assert token is not None
    key_id = entry["target"]
    walk.one(await walk.post(f"{keys}/{key_id}/delete", {}, page=keys), "api_key.delete", org)

    hooks = f"/orgs/{org}/webhooks"
    hook = {
        "project_id": str(shop.id),
        "url": "http://127.0.0.1:9/hook/tok_secretpath",
        "event_message.delivered": "on",
    }
    entry = walk.one(await walk.post(hooks, hook, page=hooks, status=201), "webhook.create", org)
    assert entry["details"]["url"] == "http://127.0.0.1:9/…"
    walk.one(await walk.post(f"{hooks}/{entry['target']}/delete", {}, page=hooks), "webhook.delete", org)

    supp = f"/orgs/{org}/suppressions"
    entry = walk.one(
        await walk.post(supp, {"address": "Gone@Dest.test"}, page=supp), "suppression.create", org
    )
    assert entry["target"] == "gone@dest.test"
    walk.one(
        await walk.post(f"{supp}/delete", {"address": "gone@dest.test"}, page=supp), "suppression.delete", org
    )

    members = f"/orgs/{org}/members"
    entry = walk.one(
        await walk.post(
            f"{members}/invite", {"email": "carol@acme.test", "role": "maintainer"}, page=members, status=201
        ),
        "invitation.create",
        org,
    )
    assert entry["details"] == {"email": "carol@acme.test", "role": "maintainer"}
    invite_link = re.search(r'id="invite-link"[^>]*>[^<]*/invite/([^<\s]+)<', walk.last.text)
    assert invite_link is not None
    entry = walk.one(
        await walk.post(f"{members}/role", {"user_id": str(bob.id), "role": "maintainer"}, page=members),
        "member.update",
        org,
    )
    assert entry["target"] == str(bob.id) and entry["details"] == {"role": "maintainer", "was": "read_only"}
    entry = walk.one(
        await walk.post(f"{members}/remove", {"user_id": str(bob.id)}, page=members), "member.delete", org
    )
    assert entry["target"] == str(bob.id)

    walk.one(await walk.post(f"{page}/delete", {}, page=page), "domain.delete", org)
    walk.one(await walk.post(f"{projects}/{shop.id}/delete", {}, page=projects), "project.delete", org)

    # The person's own account: two-factor on and off, the password.
    setup_entries = await walk.post("/account/two-factor/start", {}, page="/account", status=200)
    walk.one(setup_entries, "user.two_factor_start", org)
    secret = walk.last.text.split('id="totp-secret">')[1].split("<")[0]
    totp = pyotp.TOTP(secret)
    confirm = await walk.post(
        "/account/two-factor/confirm", {"code": totp.at(time.time() - 30)}, page="/account", status=200
    )
    walk.one(confirm, "user.two_factor_enable", org)
    disable = await walk.post("/account/two-factor/disable", {"code": totp.now()}, page="/account")
    walk.one(disable, "user.two_factor_disable", org)
    changed = await walk.post(
        "/account/password", {"current": PASSWORD, "new": NEW_PASSWORD}, page="/account"
    )
    walk.one(changed, "user.password_change", org)
    assert NEW_PASSWORD not in json.dumps(changed, default=str)

    logout = await walk.post("/logout", {}, page="/account")
    walk.one(logout, "user.logout", org)

    # The invited person joins (a new account): logged as them, in the organization.
    mark = await _last_id(site.pool)
    async with site.fresh() as carol_browser:
        form = await carol_browser.get(f"/invite/{invite_link.group(1)}")
        joined = await carol_browser.post(
            f"/invite/{invite_link.group(1)}", data={"csrf": csrf_of(form.text), "password": PASSWORD}
        )
        assert joined.status_code == 303
    carol = await users.get_user_by_email(site.pool, "carol@acme.test")
    assert carol is not None
    Walk(site, carol.id).one(await _entries(site.pool, mark), "invitation.accept", org)

    # A password reset through the mailed link: logged as the account's owner.
    await users.create_password_reset(site.pool, ann.id, "reset-token-for-the-walk", 3600)
    mark = await _last_id(site.pool)
    async with site.fresh() as browser:
        form = await browser.get("/login/reset/reset-token-for-the-walk")
        reset = await browser.post(
            "/login/reset/reset-token-for-the-walk", data={"csrf": csrf_of(form.text), "password": PASSWORD}
        )
        assert reset.status_code == 303
    walk.one(await _entries(site.pool, mark), "user.password_reset", org)

    everything = json.dumps(await _entries(site.pool), default=str)
    assert token.group(0) not in everything and token.group(0).split(".")[1] not in everything
    assert password is not None and password.group(1) not in everything
    assert "tok_secretpath" not in everything and PASSWORD not in everything


async def test_a_second_factor_sign_in_is_logged_once_both_factors_are_given(site: Site) -> None:
    ann = await add_user(site.pool, "ann@acme.test", org=site.acme)
    walk = Walk(site, ann.id)
    await site.login("ann@acme.test")
    await walk.post("/account/two-factor/start", {}, page="/account", status=200)
    totp = pyotp.TOTP(walk.last.text.split('id="totp-secret">')[1].split("<")[0])
    await walk.post(
        "/account/two-factor/confirm", {"code": totp.at(time.time() - 30)}, page="/account", status=200
    )

    async with site.fresh() as other:
        mark = await _last_id(site.pool)
        form = await other.get("/login")
        await other.post(
            "/login", data={"email": "ann@acme.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        assert await _entries(site.pool, mark) == []  # the password alone is no sign-in yet
        page = await other.get("/login/code")
        refused = await other.post("/login/code", data={"csrf": csrf_of(page.text), "code": "000000"})
        assert refused.status_code == 401
        failed = walk.one(await _entries(site.pool, mark), "user.login_failed", site.acme.org_id)
        assert failed["details"] == {"reason": "second_factor"}
        mark = await _last_id(site.pool)
        ok = await other.post("/login/code", data={"csrf": csrf_of(page.text), "code": totp.now()})
        assert ok.status_code == 303
        entry = walk.one(await _entries(site.pool, mark), "user.login", site.acme.org_id)
        assert entry["details"] == {"second_factor": True}


async def test_a_user_of_two_organizations_signs_in_in_both_logs(site: Site) -> None:
    ann = await add_user(site.pool, "ann@acme.test", org=site.acme)
    await users.set_membership(site.pool, site.other.org_id, ann.id, "read_only")
    mark = await _last_id(site.pool)
    await site.login("ann@acme.test")
    entries = await _entries(site.pool, mark)
    assert sorted(str(e["organization_id"]) for e in entries) == sorted(
        [str(site.acme.org_id), str(site.other.org_id)]
    )
    assert {e["action"] for e in entries} == {"user.login"}


async def test_a_fully_blocked_organization_is_shown_but_not_changed_in_the_dashboard(site: Site) -> None:
    org = site.acme.org_id
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    operator = await add_user(site.pool, "op@remails.test", operator=True)
    async with site.fresh() as op_browser:
        form = await op_browser.get("/login")
        await op_browser.post(
            "/login", data={"email": "op@remails.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        home = await op_browser.get("/")
        mark = await _last_id(site.pool)
        blocked = await op_browser.post(
            f"/orgs/{org}/block", data={"csrf": csrf_of(home.text), "block_status": "full_freeze"}
        )
        assert blocked.status_code == 303
        [entry] = await _entries(site.pool, mark)
        assert (entry["action"], entry["actor_kind"], entry["actor_id"]) == (
            "organization.block",
            "user",
            str(operator.id),
        )
        assert entry["client_ip"] == "127.0.0.1"

    await site.login("ann@acme.test")
    projects = f"/orgs/{org}/projects"
    page = await site.client.get(projects)
    assert page.status_code == 200  # reads stay
    mark = await _last_id(site.pool)
    for url, data in (
        (projects, {"name": "while blocked"}),
        (f"/orgs/{org}/suppressions", {"address": "a@dest.test"}),
        (f"/orgs/{org}/api-keys", {"role": "read_only"}),
        (f"/orgs/{org}/members/invite", {"email": "x@acme.test", "role": "admin"}),
        (f"/orgs/{org}/domains", {"domain": "blocked-new.test", "project_id": str(site.acme.project_id)}),
    ):
        refused = await site.client.post(url, data={**data, "csrf": csrf_of(page.text)})
        assert refused.status_code == 403, url
        assert "blocked" in refused.text and "only read" in refused.text, url
    assert [p.name for p in await orgs.list_projects(site.pool, org)] == ["main"]
    assert await site.pool.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await site.pool.fetchval("SELECT count(*) FROM invitations") == 0
    assert await site.pool.fetchval("SELECT count(*) FROM domains WHERE name = 'blocked-new.test'") == 0
    assert await _entries(site.pool, mark) == []
    # Another organization's admin is not affected.
    await add_user(site.pool, "olga@other.test", org=site.other)
    async with site.fresh() as other_browser:
        form = await other_browser.get("/login")
        await other_browser.post(
            "/login", data={"email": "olga@other.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        other_page = await other_browser.get(f"/orgs/{site.other.org_id}/projects")
        made = await other_browser.post(
            f"/orgs/{site.other.org_id}/projects", data={"name": "fine", "csrf": csrf_of(other_page.text)}
        )
        assert made.status_code == 303

    # The operator may still lift it from the dashboard; then the admin changes things again.
    async with site.fresh() as op_browser:
        form = await op_browser.get("/login")
        await op_browser.post(
            "/login", data={"email": "op@remails.test", "password": PASSWORD, "csrf": csrf_of(form.text)}
        )
        home = await op_browser.get("/")
        lifted = await op_browser.post(
            f"/orgs/{org}/block", data={"csrf": csrf_of(home.text), "block_status": "not_blocked"}
        )
        assert lifted.status_code == 303
    made = await site.client.post(projects, data={"name": "after the block", "csrf": csrf_of(page.text)})
    assert made.status_code == 303
    actions = [(e["action"], e["actor_id"]) for e in await _entries(site.pool, mark)]
    assert ("organization.unblock", str(operator.id)) in actions


async def test_the_dashboard_shows_the_same_dmarc_record_as_the_api_with_its_rua(site: Site) -> None:
    from remails.context import Context
    from remails.crypto import load_master_key
    from remails_functions.api.domains import get_domain
    from remails_functions.web.session import Visitor, principal_in
    from tests.support.recording import RecordingPublisher

    ann = await add_user(site.pool, "ann@acme.test", org=site.acme)
    await site.login("ann@acme.test")
    domain_id = await site.pool.fetchval("SELECT id FROM domains WHERE name = 'acme.test'")
    page = await site.client.get(f"/orgs/{site.acme.org_id}/domains/{domain_id}")
    assert page.status_code == 200
    ctx = Context(
        site.settings, site.pool, RecordingPublisher(), load_master_key(None, site.settings.data_dir)
    )
    caller = await principal_in(ctx, Visitor(ann, "unused"), site.acme.org_id)
    shown = await get_domain(domain_id, ctx, caller)
    [dmarc] = [r for r in shown.dns_records if r.name == "_dmarc.acme.test"]
    assert "rua=mailto:" in dmarc.value
    assert dmarc.value in page.text.replace("&#34;", '"')


async def test_a_sign_up_gets_the_default_plan_and_is_logged(pool: Pool, settings: Settings) -> None:
    site = await make_site(pool, settings, signup="open", default_monthly_quota=77)
    try:
        form = await site.client.get("/signup")
        answer = await site.client.post(
            "/signup",
            data={
                "email": "new@shop.test",
                "organization": "Shop",
                "password": PASSWORD,
                "csrf": csrf_of(form.text),
            },
        )
        assert answer.status_code == 303
        user = await users.get_user_by_email(pool, "new@shop.test")
        assert user is not None
        [org] = [o for o in await orgs.list_organizations(pool) if o.name == "Shop"]
        assert org.monthly_quota == 77
        entries = [e for e in await _entries(pool) if e["organization_id"] == org.id]
        assert [(e["action"], e["actor_kind"], e["actor_id"]) for e in entries] == [
            ("organization.create", "user", str(user.id)),
            ("user.signup", "user", str(user.id)),
        ]
        assert PASSWORD not in json.dumps(entries, default=str)
    finally:
        await site.client.aclose()


async def test_a_failed_sign_in_keeps_the_attempted_name_only_when_it_is_an_address(site: Site) -> None:
    """A password typed into the address field (a common slip) is a secret: a failed sign-in
    for no account keeps what was typed only when it has the form of an address."""
    for typed, kept in (
        ("correct horse battery staple", None),
        ("Tr0ub4dor&3", None),
        ("nobody@acme.test", "nobody@acme.test"),
    ):
        mark = await _last_id(site.pool)
        assert (await site.login(typed, "x")).status_code == 401
        [entry] = await _entries(site.pool, mark)
        assert entry["action"] == "user.login_failed" and entry["organization_id"] is None
        assert entry["details"] == {"reason": "password", "email": kept}, entry
        if kept is None:
            assert typed.lower() not in json.dumps(entry, default=str)


async def test_a_sending_blocked_organization_gets_no_invitation_mailed(
    pool: Pool, settings: Settings
) -> None:
    """Nothing of an organization under a `sending` block is sent — not even an invitation
    through the operator's system mail, which would carry the organization's freely chosen
    name to any address: the invitation is made and its link shown, not mailed."""
    system = await make_tenant(pool, settings, "remails.test")
    site = await make_site(
        pool, settings, system_project_id=str(system.project_id), system_from="noreply@remails.test"
    )
    try:
        await add_user(pool, "ann@acme.test", org=site.acme)
        await site.login("ann@acme.test")
        members = f"/orgs/{site.acme.org_id}/members"

        async def invite(address: str) -> str:
            page = await site.client.get(members)
            answer = await site.client.post(
                f"{members}/invite",
                data={"email": address, "role": "read_only", "csrf": csrf_of(page.text)},
            )
            assert answer.status_code == 201, answer.text
            assert "/invite/" in answer.text  # the link is shown either way
            return answer.text

        async def mailed() -> int:
            return int(
                await pool.fetchval("SELECT count(*) FROM messages WHERE project_id = $1", system.project_id)
            )

        assert "e-mailed" in await invite("first@dest.test") and await mailed() == 1
        await orgs.set_block_status(pool, site.acme.org_id, "no_sending", "spam")
        assert "e-mailed" not in await invite("second@dest.test")
        assert await mailed() == 1
        invited = await pool.fetchval(
            "SELECT count(*) FROM invitations WHERE organization_id = $1", site.acme.org_id
        )
        assert invited == 2
    finally:
        await site.client.aclose()
