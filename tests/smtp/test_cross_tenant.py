"""Two tenants on one SMTP edge: one's credentials never send with the other's domains, in the
envelope or in the header From, and never log in with the other's username."""

from __future__ import annotations

import aiosmtplib
import pytest

from remails.events import EventType, MessageEvent, make_event
from remails_functions import validate
from tests.factories import Tenant, make_tenant
from tests.smtp.conftest import Edge
from tests.support.db import one_row


async def _login(edge: Edge, username: str, password: str) -> aiosmtplib.SMTP:
    client = edge.client()
    await client.connect()
    await client.starttls()
    await client.login(username, password)
    return client


async def _victim(edge: Edge) -> Tenant:
    return await make_tenant(edge.pool, edge.settings, "victim.test")


async def test_one_tenants_login_cannot_use_the_others_domains_as_envelope_sender(edge: Edge) -> None:
    victim = await _victim(edge)
    client = await _login(edge, edge.tenant.username, edge.tenant.password)
    for sender in ("ceo@victim.test", "CEO@VICTIM.TEST", "ceo@mail.victim.test"):
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await client.mail(sender)
        assert info.value.code == 553 and info.value.message.startswith("5.7.1"), sender
    await client.quit()
    # The victim's own login may (the refusal is about whose domain, not the domain).
    own = await _login(edge, victim.username, victim.password)
    assert (await own.mail("ceo@victim.test")).code == 250
    await own.quit()
    assert await edge.stored_count() == 0


async def test_one_tenants_login_cannot_put_the_others_domain_in_the_header_from(edge: Edge) -> None:
    await _victim(edge)
    client = await _login(edge, edge.tenant.username, edge.tenant.password)
    await client.mail("app@example.test")
    await client.rcpt("user@dest.test")
    data = b"From: app@example.test\r\nSubject: hi\r\nFrom : CEO <ceo@victim.test>\r\n\r\nPay now.\r\n"
    try:
        response = await client.data(data)
    except aiosmtplib.SMTPDataError as exc:  # refused at the edge: nothing stored
        assert exc.code >= 500
        assert await edge.stored_count() == 0
        return
    finally:
        await client.quit()
    assert response.code == 250
    row = await one_row(edge.pool, "SELECT id, organization_id, project_id FROM messages")
    assert row["organization_id"] == edge.tenant.org_id
    ctx = edge.server.ctx  # the edge's own context: same pool and settings
    data_event = MessageEvent(
        message_id=row["id"], organization_id=row["organization_id"], project_id=row["project_id"]
    )
    reply = await validate.handle(ctx, make_event(EventType.MESSAGE_RECEIVED, data_event))
    assert reply is not None and reply["type"] == "message.rejected"
    reason = await edge.pool.fetchval("SELECT reason FROM messages WHERE id = $1", row["id"])
    assert reason == "message has more than one From header"


async def test_one_tenants_password_does_not_log_in_as_the_other(edge: Edge) -> None:
    victim = await _victim(edge)
    client = edge.client()
    await client.connect()
    await client.starttls()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
        await client.login(victim.username, edge.tenant.password)
    assert info.value.code == 535
    await client.quit()
