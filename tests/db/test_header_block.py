"""Validation reads the whole stored header block, however long, and nothing of the body."""

from __future__ import annotations

from uuid import UUID

from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, pipeline
from remails.db.messages import NewMessage, insert_message
from remails.events import EventType, MessageEvent, make_event
from remails_functions import validate
from tests.factories import Tenant, make_tenant
from tests.support.recording import RecordingPublisher

PADDING = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 900) for i in range(400))  # ~360 KiB


async def _stored(pool: Pool, tenant: Tenant, raw: bytes) -> UUID:
    new = NewMessage(tenant.org_id, tenant.project_id, f"a@{tenant.domain}", ["x@dest.test"], raw, "<t@x>")
    return await insert_message(pool, new, 3600)


async def _validate(pool: Pool, settings: Settings, tenant: Tenant, message_id: UUID) -> str:
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    data = MessageEvent(message_id=message_id, organization_id=tenant.org_id, project_id=tenant.project_id)
    reply = await validate.handle(ctx, make_event(EventType.MESSAGE_RECEIVED, data))
    assert reply is not None
    return str(reply["type"])


async def test_a_from_placed_after_256_kib_of_headers_is_seen(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "own.test")
    raw = b"From: app@own.test\r\n" + PADDING + b"From: ceo@other.test\r\n\r\nbody\r\n"
    message_id = await _stored(pool, tenant, raw)
    loaded = await pipeline.load_to_validate(pool, message_id)
    assert loaded is not None and loaded.head.endswith(b"From: ceo@other.test\r\n")
    assert await _validate(pool, settings, tenant, message_id) == "message.rejected"
    reason = await pool.fetchval("SELECT reason FROM messages WHERE id = $1", message_id)
    assert reason == "message has more than one From header"


async def test_from_lines_in_the_body_do_not_count(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "own.test")
    raw = b"From: app@own.test\r\n" + PADDING + b"\r\nFrom: ceo@other.test\r\n\r\nFrom: x@y.test\r\n"
    message_id = await _stored(pool, tenant, raw)
    assert await _validate(pool, settings, tenant, message_id) == "message.validated"
