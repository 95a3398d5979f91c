"""Receiving over real SMTP: the inbound MX of a running service takes only addresses we
issued, and what comes back (a DSN after acceptance, an ARF complaint, DMARC reports) changes
the recipient it names, suppresses it, and reaches the customer (webhook, API)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any
from uuid import UUID

import aiosmtplib
import pytest
from standardwebhooks.webhooks import Webhook

from remails import return_path
from remails.db import Pool, credentials, inbound
from tests.e2e.conftest import World, message_status
from tests.factories import make_tenant, store_message
from tests.inbound import samples
from tests.inbound.conftest import REPORTS_DOMAIN, Receiving, start_receiving
from tests.support.db import one_row
from tests.support.receiver import Receiver
from tests.support.wait import wait_until


def _pool(r: Receiving) -> Pool:
    assert r.runtime.db is not None
    return r.runtime.db.pool


def _key(r: Receiving) -> bytes:
    assert r.runtime.ctx is not None
    return r.runtime.ctx.master_key.derive(return_path.KEY_PURPOSE)


async def _inbound(pool: Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT kind, rcpt, status, result FROM inbound_messages ORDER BY created_at")
    return [dict(r) for r in rows]


async def _processed(pool: Pool, count: int) -> list[dict[str, Any]]:
    async def done() -> bool:
        rows = await _inbound(pool)
        return len(rows) >= count and all(r["status"] != "received" for r in rows)

    await wait_until(done, bound=15)
    return await _inbound(pool)


async def _delivered_message(r: Receiving, recipient: str) -> tuple[UUID, int]:
    """A message stored and marked delivered to `recipient` (the state after a 250 from its MX)."""
    pool = _pool(r)
    message_id = await store_message(pool, r.tenant, [recipient])
    recipient_id = await pool.fetchval(
        "UPDATE recipients SET status = 'delivered', delivered_at = now() WHERE message_id = $1 RETURNING id",
        message_id,
    )
    await pool.execute(
        "UPDATE messages SET status = 'delivered', finished_at = now() WHERE id = $1", message_id
    )
    return message_id, int(recipient_id)


async def test_the_mx_takes_only_addresses_we_issued(receiving: Receiving) -> None:
    r = receiving
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    good = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    local, _, domain = good.partition("@")
    altered = ("c" if local[10] != "c" else "d").join([local[:10], local[11:]]) + "@" + domain
    other = await make_tenant(_pool(r), r.runtime.settings, "other.test")
    refused = [
        "someone@example.net",  # relaying
        f"app@{r.tenant.domain}",  # a customer's domain is not ours to receive for
        f"nobody@{r.runtime.settings.hostname}",
        f"nobody@{REPORTS_DOMAIN}",
        altered,  # an altered token
        return_path.bounce_address(b"x" * 32, r.tenant.domain, message_id, recipient_id),  # forged
        good.replace(f"@rp.{r.tenant.domain}", f"@rp.{other.domain}"),  # another organization's
        return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id + 1000),  # no such row
    ]
    dsn = samples.postfix_dsn("x", "bob@receiver.test")
    for rcpt in refused:
        assert await r.send_to_mx(rcpt, dsn) == (550, "5.1.1 No such user here"), rcpt
    assert await _inbound(_pool(r)) == []
    assert await _pool(r).fetchval("SELECT count(*) FROM messages") == 1  # nothing was relayed

    client = r.mx()
    await client.connect()
    await client.ehlo()
    assert client.supports_extension("starttls")
    await client.starttls()
    await client.ehlo()
    assert not client.supports_extension("auth")
    code, _ = await client.execute_command(b"AUTH", b"PLAIN", b"AGJvYgBzZWNyZXQ=")
    assert code == 502
    await client.quit()

    code, text = await r.send_to_mx(good, dsn)
    assert code == 250, text


async def test_a_dsn_after_acceptance_bounces_the_verp_recipient(receiving: Receiving) -> None:
    """Verified return path → the message leaves with a VERP MAIL FROM whose token verifies;
    the DSN sent to it marks that recipient bounced, suppresses it, and the webhook says so."""
    r = receiving
    pool = _pool(r)
    sink = await r.world.sink("receiver.test", "127.0.0.30")
    # Before the return path verifies, the message's own envelope sender is used.
    await r.world.submit(r.runtime, r.tenant, ["early@receiver.test"])
    await wait_until(lambda: len(sink.received) == 1, bound=20)
    assert sink.received[0].mail_from == f"app@{r.tenant.domain}"
    sink.received.clear()
    r.publish_return_path(r.tenant.domain)
    result = await r.verify()
    assert result["verified"] and result["return_path"]["verified"], result
    async with r.api() as api:
        view = (await api.get(f"/v1/domains/{await r.domain_id()}")).json()
    records = {(x["type"], x["name"]): x["value"] for x in view["dns_records"]}
    assert records[("MX", "rp.example.test")] == "10 mx.remails.test."
    assert records[("TXT", "_dmarc.example.test")].endswith(f"@{REPORTS_DOMAIN}")
    secret = await r.webhook(["message.delivered", "message.bounced"])

    message_id = await r.world.submit(r.runtime, r.tenant, ["bob@receiver.test", "carol@receiver.test"])
    await wait_until(lambda: len(sink.received) == 2, bound=20)
    await wait_until(lambda: _is(pool, message_id, "delivered"), bound=20)
    ids = {
        row["address"]: row["id"]
        for row in await pool.fetch(
            "SELECT address, id FROM recipients WHERE message_id = $1::uuid", message_id
        )
    }
    verp = {}
    for received in sink.received:
        [rcpt] = received.rcpt_tos  # one transaction per recipient, each with its own sender
        local, _, domain = received.mail_from.partition("@")
        assert domain == "rp.example.test"
        token = return_path.verify_bounce_token(_key(r), local)
        assert token == return_path.BounceToken(UUID(message_id), ids[rcpt])
        verp[rcpt] = received.mail_from

    code, text = await r.send_to_mx(
        verp["bob@receiver.test"], samples.postfix_dsn(verp["bob@receiver.test"], "bob@receiver.test")
    )
    assert code == 250, text
    await wait_until(lambda: _recipient(pool, ids["bob@receiver.test"], "bounced"), bound=15)
    row = await one_row(
        pool, "SELECT last_enhanced, last_text FROM recipients WHERE id = $1", ids["bob@receiver.test"]
    )
    assert row["last_enhanced"] == "5.1.1" and "unknown user" in row["last_text"]
    assert await _recipient(pool, ids["carol@receiver.test"], "delivered")
    assert await message_status(pool, message_id) == "bounced"
    reason = await pool.fetchval(
        "SELECT reason FROM suppressions WHERE organization_id = $1 AND address = 'bob@receiver.test'",
        r.tenant.org_id,
    )
    assert reason is not None and reason.startswith("hard bounce")

    def bounced() -> list[dict[str, Any]]:
        hook = Webhook(secret)
        payloads = [
            hook.verify(c.body, {k: v for k, v in c.headers.items() if k.startswith("webhook-")})
            for c in r.receiver.calls
        ]
        return [p for p in payloads if p["type"] == "message.bounced"]

    await wait_until(lambda: len(bounced()) == 1, bound=15)
    [event] = bounced()
    assert event["data"]["async"] is True and event["data"]["recipient"] == "bob@receiver.test"
    assert {x["address"]: x["status"] for x in event["data"]["recipients"]}["bob@receiver.test"] == "bounced"
    async with r.api() as api:
        detail = (await api.get(f"/v1/messages/{message_id}")).json()
    assert {x["address"]: x["status"] for x in detail["recipients"]} == {
        "bob@receiver.test": "bounced",
        "carol@receiver.test": "delivered",
    }

    # The same DSN again (a replay) changes nothing and sends no second webhook.
    code, _ = await r.send_to_mx(verp["bob@receiver.test"], samples.postfix_dsn("x", "bob@receiver.test"))
    assert code == 250
    rows = await _processed(pool, 2)
    assert [x["status"] for x in rows] == ["processed", "ignored"]
    assert len(bounced()) == 1


async def _is(pool: Pool, message_id: str, status: str) -> bool:
    return await message_status(pool, message_id) == status


async def _recipient(pool: Pool, recipient_id: int, status: str) -> bool:
    return bool(
        await pool.fetchval("SELECT status::text FROM recipients WHERE id = $1", recipient_id) == status
    )


async def test_an_arf_complaint_to_the_feedback_address_suppresses_the_recipient(
    receiving: Receiving,
) -> None:
    r = receiving
    pool = _pool(r)
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    verp = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    forged = return_path.bounce_address(b"x" * 32, r.tenant.domain, message_id, recipient_id)
    # A complaint naming a return path we did not mint is taken (it is a feedback address) but ignored.
    assert (
        await r.send_to_mx(f"fbl@{REPORTS_DOMAIN}", samples.arf_complaint("fbl", "bob@receiver.test", forged))
    )[0] == 250
    assert [x["status"] for x in await _processed(pool, 1)] == ["ignored"]
    assert await _recipient(pool, recipient_id, "delivered")

    await r.webhook(["message.complained"])
    complaint = samples.arf_complaint(f"fbl@{REPORTS_DOMAIN}", "bob@receiver.test", verp)
    assert (await r.send_to_mx(f"fbl@{REPORTS_DOMAIN}", complaint))[0] == 250
    await wait_until(lambda: _recipient(pool, recipient_id, "complained"), bound=15)
    reason = await pool.fetchval(
        "SELECT reason FROM suppressions WHERE organization_id = $1 AND address = 'bob@receiver.test'",
        r.tenant.org_id,
    )
    assert reason == "complaint"
    await wait_until(
        lambda: any(json.loads(c.body)["type"] == "message.complained" for c in r.receiver.calls), bound=15
    )


async def test_dmarc_reports_are_parsed_and_listed_and_bad_ones_refused(receiving: Receiving) -> None:
    r = receiving
    pool = _pool(r)
    domain_id = await r.domain_id()
    rua = return_path.report_address(REPORTS_DOMAIN, UUID(domain_id))
    xml = samples.dmarc_xml("example.test")
    good = [
        (samples.gzipped(xml), "application/gzip", "provider.test!example.test!1!2.xml.gz"),
        (samples.zipped(samples.dmarc_xml("example.test", report_id="r-2")), "application/zip", "r.zip"),
        (samples.dmarc_xml("example.test", report_id="r-3", org="other-provider.test"), "text/xml", "r.xml"),
    ]
    bad = [
        (samples.zip_bomb(), "application/zip", "bomb.zip"),
        (samples.entity_attack("example.test"), "text/xml", "lol.xml"),
        (samples.dmarc_xml("other.test", report_id="r-9"), "text/xml", "other.xml"),  # not this domain's
    ]
    for attachment, ctype, name in good + bad:
        code, text = await r.send_to_mx(rua, samples.report_mail(rua, attachment, ctype, name))
        assert code == 250, text
    rows = await _processed(pool, len(good) + len(bad))
    assert [x["status"] for x in rows] == ["processed"] * 3 + ["refused"] * 3, rows

    async with r.api() as api:
        response = await api.get(f"/v1/domains/{domain_id}/dmarc-reports")
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted((x["org_name"], x["report_id"]) for x in body["reports"]) == [
        ("other-provider.test", "r-3"),
        ("provider.test", "r-1"),
        ("provider.test", "r-2"),
    ]
    report = next(x for x in body["reports"] if x["report_id"] == "r-1")
    assert report["begin"].startswith("2025-12-01")
    assert [
        (x["source_ip"], x["count"], x["dkim"], x["spf"], x["disposition"]) for x in report["records"]
    ] == [
        ("127.0.0.2", 3, "pass", "pass", "none"),
        ("127.0.0.3", 4, "fail", "fail", "none"),
    ]
    assert body["summary"] == [
        {"source_ip": "127.0.0.2", "messages": 9, "dmarc_pass": 9, "dmarc_fail": 0},
        {"source_ip": "127.0.0.3", "messages": 12, "dmarc_pass": 0, "dmarc_fail": 12},
    ]
    # The CLI shows the same.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "remails.cli",
        "domain",
        "dmarc-reports",
        "example.test",
        "--org",
        str(r.tenant.org_id),
        "--json",
        env={
            **os.environ,
            "REMAILS_DATABASE_URL": str(r.runtime.settings.database_url),
            "REMAILS_DATA_DIR": str(r.runtime.settings.data_dir),
        },
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    shown = json.loads(out)
    assert sorted(x["report_id"] for x in shown["reports"]) == ["r-1", "r-2", "r-3"]
    assert shown["summary"] == body["summary"]
    # Another organization cannot read them.
    other = await make_tenant(pool, r.runtime.settings, "other.test")
    _, token = await credentials.create_api_key(pool, other.org_id, "admin")
    async with r.api() as api:
        api.headers["Authorization"] = f"Bearer {token}"
        assert (await api.get(f"/v1/domains/{domain_id}/dmarc-reports")).status_code in (403, 404)


@pytest.mark.parametrize(
    ("dialect", "status", "enhanced", "suppressed"),
    [
        ("exim", "bounced", "5.0.0", False),  # 5.x.x, but not about the address: no suppression
        ("qmail", "bounced", "5.0.0", False),  # no delivery-status part: found by the detector library
        ("delayed", "delivered", None, False),  # 4.x.x delayed: a note only
    ],
)
async def test_dsn_dialects_over_smtp(
    receiving: Receiving, dialect: str, status: str, enhanced: str | None, suppressed: bool
) -> None:
    r = receiving
    pool = _pool(r)
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    verp = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    make = {"exim": samples.exim_dsn, "qmail": samples.qmail_bounce, "delayed": samples.delayed_dsn}[dialect]
    code, text = await r.send_to_mx(verp, make(verp, "bob@receiver.test"))
    assert code == 250, text
    [row] = await _processed(pool, 1)
    assert row["status"] == "processed", row
    recipient = await one_row(
        pool, "SELECT status::text, last_enhanced, last_text FROM recipients WHERE id = $1", recipient_id
    )
    assert recipient["status"] == status
    if enhanced is not None:
        assert recipient["last_enhanced"] == enhanced
    else:
        assert recipient["last_text"].startswith("delayed after acceptance: 4.4.1")
    count = await pool.fetchval(
        "SELECT count(*) FROM suppressions WHERE organization_id = $1", r.tenant.org_id
    )
    assert count == (1 if suppressed else 0)


async def test_the_sweep_processes_what_lost_its_event_and_forgets_old_mail(receiving: Receiving) -> None:
    r = receiving
    pool = _pool(r)
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    verp = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    new = inbound.NewInbound(
        "bounce",
        verp,
        "",
        "127.0.0.9",
        samples.postfix_dsn(verp, "bob@receiver.test"),
        r.tenant.org_id,
        message_id,
        recipient_id,
    )
    await inbound.store_inbound(pool, new)  # stored, no inbound.received published
    old = await inbound.store_inbound(pool, inbound.NewInbound("postmaster", "postmaster@x", "", None, b"x"))
    await pool.execute(
        "UPDATE inbound_messages SET status = 'ignored', created_at = now() - interval '91 days'"
        " WHERE id = $1",
        old,
    )
    await wait_until(lambda: _recipient(pool, recipient_id, "bounced"), bound=20)

    async def purged() -> bool:  # past REMAILS_METADATA_RETENTION_DAYS (90)
        return bool(await pool.fetchval("SELECT count(*) FROM inbound_messages WHERE id = $1", old) == 0)

    await wait_until(purged, bound=10)


async def test_an_arf_complaint_to_the_return_path_marks_that_recipient_complained(
    receiving: Receiving,
) -> None:
    r = receiving
    pool = _pool(r)
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    verp = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    code, _ = await r.send_to_mx(verp, samples.arf_complaint(verp, "bob@receiver.test", None))
    assert code == 250
    await wait_until(lambda: _recipient(pool, recipient_id, "complained"), bound=15)
    assert await pool.fetchval(
        "SELECT reason FROM suppressions WHERE organization_id = $1", r.tenant.org_id
    ) == ("complaint")


async def test_the_mx_keeps_the_submission_limits(world: World, receiver: Receiver) -> None:
    r = await start_receiving(world, receiver, smtp_max_message_size=4096, smtp_max_connections_per_ip=2)
    message_id, recipient_id = await _delivered_message(r, "bob@receiver.test")
    verp = return_path.bounce_address(_key(r), r.tenant.domain, message_id, recipient_id)
    big = samples.postfix_dsn(verp, "bob@receiver.test") + (b"x" * 70 + b"\r\n") * 100
    assert len(big) > 4096
    code, text = await r.send_to_mx(verp, big)
    assert (code, text) == (552, "5.3.4 Message too big")
    assert await _inbound(_pool(r)) == []
    held = [r.mx(), r.mx()]
    for client in held:
        await client.connect()
    third = r.mx()
    try:
        await third.connect()
        code = third.last_ehlo_response.code if third.last_ehlo_response else 0
    except aiosmtplib.SMTPConnectResponseError as exc:
        code = exc.code
    assert code == 421
    for client in held:
        await client.quit()
