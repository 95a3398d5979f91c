"""Mail the dashboard sends through system mail, delivered for real: a password reset link
(used once) and an invitation. Without system mail, the reset page sends people to the
operator and nothing is stored."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import httpx

from remails.db import Pool, users
from tests.e2e.conftest import World
from tests.factories import make_tenant
from tests.support.db import one_row
from tests.support.wait import wait_until
from tests.web.conftest import PASSWORD, Site, add_user, csrf_of


async def _system_runtime(world: World, pool: Pool) -> tuple[str, str]:
    """A runtime with system mail from a verified domain; its origin and the sender."""
    system = await make_tenant(pool, world.settings(), "remails.test")
    key = await one_row(
        pool, "SELECT dkim_selector, dkim_public_key FROM domains WHERE name = 'remails.test'"
    )
    world.dns.zone.txt(
        f"{key['dkim_selector']}._domainkey.remails.test", f"v=DKIM1; k=rsa; p={key['dkim_public_key']}"
    )
    runtime = await world.runtime(
        system_project_id=str(system.project_id), system_from="noreply@remails.test"
    )
    assert runtime.api is not None
    host, port = runtime.api.address
    return f"http://{host}:{port}", "noreply@remails.test"


def _body(data: bytes) -> str:
    mail = message_from_bytes(data, policy=default)
    assert isinstance(mail, EmailMessage)
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def test_password_reset_by_email_works_once(world: World, pool: Pool) -> None:
    sink = await world.sink("dest.test", "127.0.0.12")
    origin, sender = await _system_runtime(world, pool)
    await add_user(pool, "dev@dest.test")
    async with httpx.AsyncClient(base_url=origin) as client:
        form = await client.get("/login/forgot")
        assert '<label for="email">Email</label>' in form.text
        asked = await client.post(
            "/login/forgot", data={"email": "dev@dest.test", "csrf": csrf_of(form.text)}
        )
        assert "is on its way" in asked.text
        # An unknown address gets the same answer, and no mail.
        nobody = await client.post(
            "/login/forgot", data={"email": "nobody@dest.test", "csrf": csrf_of(form.text)}
        )
        assert nobody.text.replace("nobody@", "dev@") == asked.text

        await wait_until(lambda: len(sink.received) >= 1, bound=30)
        mail = sink.received[0]
        assert mail.rcpt_tos == ["dev@dest.test"] and mail.mail_from.endswith("remails.test")
        found = re.search(r"(/login/reset/[\w-]+)", _body(mail.data))
        assert found, _body(mail.data)
        link = found.group(1)

        page = await client.get(link)
        assert '<label for="password">New password</label>' in page.text
        done = await client.post(link, data={"password": "a brand new password", "csrf": csrf_of(page.text)})
        assert done.status_code == 303 and done.headers["location"] == "/login?reset=1"
        assert (await client.get(link)).status_code == 404  # used once
        again = await client.post(link, data={"password": "yet another password", "csrf": csrf_of(page.text)})
        assert again.status_code == 404

        login = await client.get("/login")
        old = await client.post(
            "/login", data={"email": "dev@dest.test", "password": PASSWORD, "csrf": csrf_of(login.text)}
        )
        assert old.status_code == 401
        new = await client.post(
            "/login",
            data={"email": "dev@dest.test", "password": "a brand new password", "csrf": csrf_of(login.text)},
        )
        assert new.status_code == 303
    assert len(sink.received) == 1
    assert sender == "noreply@remails.test"


async def test_an_invitation_is_emailed(world: World, pool: Pool) -> None:
    sink = await world.sink("dest.test", "127.0.0.12")
    origin, _ = await _system_runtime(world, pool)
    shop = await make_tenant(pool, world.settings(), "shop.test")
    await add_user(pool, "ann@shop.test", org=shop)
    async with httpx.AsyncClient(base_url=origin) as client:
        login = await client.get("/login")
        await client.post(
            "/login", data={"email": "ann@shop.test", "password": PASSWORD, "csrf": csrf_of(login.text)}
        )
        page = await client.get(f"/orgs/{shop.org_id}/members")
        invited = await client.post(
            f"/orgs/{shop.org_id}/members/invite",
            data={"email": "bob@dest.test", "role": "read_only", "csrf": csrf_of(page.text)},
        )
        assert invited.status_code == 201 and "e-mailed" in invited.text
    await wait_until(lambda: len(sink.received) >= 1, bound=30)
    body = _body(sink.received[0].data)
    assert "org shop.test" in body and "read-only" in body
    token = re.search(r"/invite/([\w-]+)", body)
    assert token is not None and (await users.get_invitation(pool, token.group(1))) is not None


async def test_without_system_mail_the_operator_resets(site: Site) -> None:
    await add_user(site.pool, "ann@acme.test", org=site.acme)
    page = await site.client.get("/login/forgot")
    assert "remails user reset-password" in page.text and "<form" not in page.text.split("<main>")[1]
    before = await site.pool.fetchval("SELECT count(*) FROM messages")
    asked = await site.client.post(
        "/login/forgot",
        data={"email": "ann@acme.test", "csrf": csrf_of((await site.client.get("/login")).text)},
    )
    assert asked.status_code == 200
    assert await site.pool.fetchval("SELECT count(*) FROM password_resets") == 0
    assert await site.pool.fetchval("SELECT count(*) FROM messages") == before
