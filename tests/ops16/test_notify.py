"""The notify function on a real PostgreSQL: a pending notification becomes one message of
the system project to the organization's notification_email and its admins (not its other
members), emitted as message.received; a second tick mails nothing again; without system
mail a notification is only recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from remails.config import Settings, load_settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, orgs, users
from remails.events import EventType, Tick, make_event
from remails_functions import notify
from tests.factories import make_tenant
from tests.support.db import one_row
from tests.support.recording import RecordingPublisher


def _tick() -> Any:
    return make_event(EventType.TICK, Tick(at=datetime.now(UTC)))


async def _notice(pool: Pool, org_id: Any) -> Any:
    return await pool.fetchval(
        "INSERT INTO notifications (organization_id, kind, message, details)"
        " VALUES ($1, 'quota.warning', 'Monthly quota: 8 of 10 messages used', '{\"used\": 8}') RETURNING id",
        org_id,
    )


async def test_a_notification_is_mailed_once_to_the_address_and_the_admins(
    pool: Pool, settings: Settings
) -> None:
    system = await make_tenant(pool, settings, "ops.test")
    tenant = await make_tenant(pool, settings, "acme.test")
    await orgs.update_organization(pool, tenant.org_id, notification_email="Alerts@Acme.test")
    for address, role in (("boss@acme.test", "admin"), ("intern@acme.test", "read_only")):
        user = await users.create_user(pool, address, "x")
        await pool.execute(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, $3::api_role)",
            tenant.org_id,
            user.id,
            role,
        )
    notice = await _notice(pool, tenant.org_id)
    on = load_settings(
        **{**settings.model_dump(), "system_project_id": str(system.project_id), "system_from": "n@ops.test"}
    )
    publisher = RecordingPublisher()
    ctx = Context(on, pool, publisher, load_master_key(None, on.data_dir))

    await notify.handle_tick(ctx, _tick())
    row = await one_row(pool, "SELECT mail_status, mail_message_id FROM notifications WHERE id = $1", notice)
    assert row["mail_status"] == "sent"
    message = await one_row(
        pool,
        "SELECT project_id, mail_from, raw, label, metadata,"
        " ARRAY(SELECT address FROM recipients WHERE message_id = m.id ORDER BY address) AS rcpts"
        " FROM messages m WHERE id = $1",
        row["mail_message_id"],
    )
    assert message["project_id"] == system.project_id and message["mail_from"] == "n@ops.test"
    assert message["rcpts"] == ["alerts@acme.test", "boss@acme.test"]  # not the read-only member
    assert message["label"] == "quota.warning" and message["metadata"] == {"notification_id": str(notice)}
    mail = message_from_bytes(bytes(message["raw"]), policy=default_policy)
    assert mail["From"].addresses[0].addr_spec == "n@ops.test"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "Monthly quota: 8 of 10" in str(mail["Subject"]) and "used: 8" in mail.get_content()
    assert [e["msgid"] for e in publisher.of_type("message.received")] == [str(row["mail_message_id"])]

    await notify.handle_tick(ctx, _tick())  # nothing pending: nothing mailed again
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE project_id = $1", system.project_id) == 1
    assert len(publisher.of_type("message.received")) == 1


async def test_without_system_mail_a_notification_is_recorded_not_mailed(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    await orgs.update_organization(pool, tenant.org_id, notification_email="alerts@acme.test")
    notice = await _notice(pool, tenant.org_id)
    publisher = RecordingPublisher()
    ctx = Context(settings, pool, publisher, load_master_key(None, settings.data_dir))
    await notify.handle_tick(ctx, _tick())
    assert await pool.fetchval("SELECT mail_status FROM notifications WHERE id = $1", notice) == "not_sent"
    assert await pool.fetchval("SELECT count(*) FROM messages") == 0 and publisher.events == []
