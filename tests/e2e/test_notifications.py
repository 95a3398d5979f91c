"""Notifications end to end through the all-in-one runtime: quota warnings and domain re-checks
mailed from the system project through the normal pipeline (DKIM-signed, delivered to the
organization's notification_email on a recording sink), against a loopback DNS server."""

from __future__ import annotations

import email
import email.policy
import functools
from collections.abc import Callable
from typing import Any

import dkim
import dns.resolver
import httpx

from remails.db import Pool, orgs
from remails.domain_records import expected_records
from remails.runtime import Runtime
from tests.e2e.conftest import EGRESS_IPS, World, message_status
from tests.factories import Tenant, make_tenant
from tests.support.db import one_row
from tests.support.sink import Sink
from tests.support.wait import wait_until

SYSTEM_DOMAIN = "remails-system.test"
SYSTEM_FROM = f"notifications@{SYSTEM_DOMAIN}"
INBOX = "ops@inbox.test"


def _dns_txt(world: World) -> Callable[..., bytes | None]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


async def _publish_all(world: World, pool: Pool, domain: str) -> dict[str, str]:
    """Every record a verified domain needs (DKIM, SPF, DMARC): name by kind."""
    row = await one_row(pool, "SELECT dkim_selector, dkim_public_key FROM domains WHERE name = $1", domain)
    names = {}
    for record in expected_records(domain, row["dkim_selector"], row["dkim_public_key"], EGRESS_IPS):
        world.dns.zone.remove(record.name, "TXT")
        world.dns.zone.txt(record.name, record.value)
        names[record.kind] = record.name
    return names


async def _system_runtime(world: World, **overrides: Any) -> tuple[Runtime, Pool, Sink, Tenant]:
    """A runtime whose notifications are mailed from a system project (made before it starts,
    as an operator would), an inbox sink for the customer's notification_email."""
    inbox = await world.sink("inbox.test", "127.0.0.12")
    from remails.db import create_pool

    setup = await create_pool(str(world.base["database_url"]), max_size=2)
    try:
        system = await make_tenant(setup, world.settings(), SYSTEM_DOMAIN)
        await _publish_all(world, setup, SYSTEM_DOMAIN)
    finally:
        await setup.close()
    runtime = await world.runtime(
        system_project_id=str(system.project_id), system_from=SYSTEM_FROM, **overrides
    )
    assert runtime.db is not None
    return runtime, runtime.db.pool, inbox, system


def _mails(inbox: Sink) -> list[email.message.EmailMessage]:
    parsed = []
    for received in inbox.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        parsed.append(message)
    return parsed


async def _kinds(pool: Pool, org_id: Any) -> list[str]:
    rows = await pool.fetch(
        "SELECT kind FROM notifications WHERE organization_id = $1 ORDER BY created_at", org_id
    )
    return [r["kind"] for r in rows]


async def test_quota_warning_at_80_percent_and_exhausted_at_100_mailed_once_each(world: World) -> None:
    dest = await world.sink("dest.test", "127.0.0.10")
    runtime, pool, inbox, system = await _system_runtime(world)
    tenant = await world.tenant(runtime, "customer.test", quota=10)
    await orgs.update_organization(pool, tenant.org_id, notification_email=INBOX)

    sent = [await world.submit(runtime, tenant, [f"u{i}@dest.test"]) for i in range(8)]
    await wait_until(lambda: len(inbox.received) == 1, bound=30)
    warning = inbox.received[0]
    assert warning.mail_from == SYSTEM_FROM and warning.rcpt_tos == [INBOX]
    assert dkim.verify(warning.data, dnsfunc=_dns_txt(world))
    assert f"d={SYSTEM_DOMAIN}".encode() in warning.data.split(b"\r\n\r\n")[0]
    mail = _mails(inbox)[0]
    assert SYSTEM_FROM in str(mail["From"]) and INBOX in str(mail["To"])
    assert "8 of 10" in str(mail["Subject"])
    assert "quota.warning" in mail.get_content()
    assert await _kinds(pool, tenant.org_id) == ["quota.warning"]
    # Through the normal pipeline: a message of the system project, in its message log.
    mailed = await pool.fetchval("SELECT mail_message_id FROM notifications WHERE kind = 'quota.warning'")
    owner = await pool.fetchval("SELECT project_id FROM messages WHERE id = $1", mailed)
    assert owner == system.project_id
    await wait_until(lambda: _is_delivered(pool, str(mailed)), bound=30)

    sent.append(await world.submit(runtime, tenant, ["u8@dest.test"]))  # 9th: 90 %, warned already
    sent.append(await world.submit(runtime, tenant, ["u9@dest.test"]))  # 10th: 100 %
    await wait_until(lambda: len(inbox.received) == 2, bound=30)
    assert dkim.verify(inbox.received[1].data, dnsfunc=_dns_txt(world))
    assert "10 of 10" in str(_mails(inbox)[1]["Subject"])
    for message_id in sent:
        await wait_until(functools.partial(_is_delivered, pool, message_id), bound=30)
    assert len(dest.received) == 10
    await wait_until(lambda: _none_pending(pool), bound=10)
    assert await _kinds(pool, tenant.org_id) == ["quota.warning", "quota.exhausted"]
    assert len(inbox.received) == 2  # no second warning
    listed = await pool.fetch(
        "SELECT kind, mail_status, details FROM notifications WHERE organization_id = $1 ORDER BY created_at",
        tenant.org_id,
    )
    assert [(r["kind"], r["mail_status"], r["details"]["used"]) for r in listed] == [
        ("quota.warning", "sent", 8),
        ("quota.exhausted", "sent", 10),
    ]
    assert runtime.api is not None and runtime.new_admin_token
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        headers = {"Authorization": f"Bearer {runtime.new_admin_token}"}
        shown = (await client.get(f"/v1/organizations/{tenant.org_id}/notifications", headers=headers)).json()
        org = (await client.get(f"/v1/organizations/{tenant.org_id}", headers=headers)).json()
    assert [(n["kind"], n["subject"], n["details"]["limit"]) for n in shown] == [
        ("quota.exhausted", "Monthly quota: 10 of 10 messages used; further messages are held", 10),
        ("quota.warning", "Monthly quota: 8 of 10 messages used", 10),
    ]
    assert all(n["created_at"] for n in shown)
    assert (org["quota"]["limit"], org["quota"]["used"]) == (10, 10)


async def _is_delivered(pool: Pool, message_id: str) -> bool:
    return await message_status(pool, message_id) == "delivered"


async def _none_pending(pool: Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM notifications WHERE mail_status = 'pending'") == 0)


async def test_a_domain_whose_dkim_record_goes_is_invalid_once_and_valid_when_it_returns(
    world: World,
) -> None:
    runtime, pool, inbox, _ = await _system_runtime(world, dns_recheck_seconds=0.5)
    for record in expected_records("customer.test", "any", "key", EGRESS_IPS):  # SPF, DMARC: key-free
        if record.kind != "dkim":
            world.dns.zone.txt(record.name, record.value)
    tenant = await world.tenant(runtime, "customer.test")  # publishes its DKIM key
    names = await _publish_all(world, pool, "customer.test")
    await orgs.update_organization(pool, tenant.org_id, notification_email=INBOX)

    async def status() -> str:
        return str(await pool.fetchval("SELECT status FROM domains WHERE name = 'customer.test'"))

    async def checked_since(mark: Any) -> bool:
        at = await pool.fetchval("SELECT last_checked_at FROM domains WHERE name = 'customer.test'")
        return bool(at > mark)

    # Records in place: re-checks find nothing to say.
    mark = await pool.fetchval("SELECT now()")
    await wait_until(lambda: checked_since(mark), bound=15)
    assert await status() == "verified" and await _kinds(pool, tenant.org_id) == []

    world.dns.zone.remove(names["dkim"], "TXT")
    await wait_until(lambda: len(inbox.received) == 1, bound=30)
    assert await status() == "invalid"
    assert runtime.api is not None and runtime.new_admin_token
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        headers = {"Authorization": f"Bearer {runtime.new_admin_token}"}
        listed = (await client.get(f"/v1/organizations/{tenant.org_id}/domains", headers=headers)).json()
    assert [(d["domain"], d["status"], d["verified"]) for d in listed] == [("customer.test", "invalid", True)]
    mail = _mails(inbox)[0]
    assert "customer.test" in str(mail["Subject"]) and "no longer match" in str(mail["Subject"])
    assert dkim.verify(inbox.received[0].data, dnsfunc=_dns_txt(world))
    mark = await pool.fetchval("SELECT now()")
    await wait_until(lambda: checked_since(mark), bound=15)  # checked again, still invalid
    await wait_until(lambda: _none_pending(pool), bound=10)
    assert await _kinds(pool, tenant.org_id) == ["domain.invalid"] and len(inbox.received) == 1

    await _publish_all(world, pool, "customer.test")
    await wait_until(lambda: len(inbox.received) == 2, bound=30)
    assert await status() == "verified"
    assert "match again" in str(_mails(inbox)[1]["Subject"])
    assert await _kinds(pool, tenant.org_id) == ["domain.invalid", "domain.valid"]
    notice = await one_row(pool, "SELECT details FROM notifications WHERE kind = 'domain.invalid'")
    assert notice["details"]["domain"] == "customer.test"
    assert notice["details"]["checks"]["dkim"]["ok"] is False


async def test_without_system_mail_notifications_are_recorded_and_not_mailed(world: World) -> None:
    dest = await world.sink("dest.test", "127.0.0.10")
    inbox = await world.sink("inbox.test", "127.0.0.12")
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant = await world.tenant(runtime, "customer.test", quota=1)
    await orgs.update_organization(pool, tenant.org_id, notification_email=INBOX)
    message_id = await world.submit(runtime, tenant, ["u@dest.test"])
    await wait_until(lambda: _is_delivered(pool, message_id), bound=30)
    await wait_until(lambda: _none_pending(pool), bound=10)
    rows = await pool.fetch(
        "SELECT kind, mail_status FROM notifications WHERE organization_id = $1", tenant.org_id
    )
    assert [(r["kind"], r["mail_status"]) for r in rows] == [("quota.exhausted", "not_sent")]
    assert inbox.received == [] and len(dest.received) == 1
