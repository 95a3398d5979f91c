"""Retention on a real PostgreSQL: each purge removes exactly the rows past their retention, in
batches, through an index; message statistics are unchanged by the purge; the audit log's
guard lets only the purge delete, and only old entries."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import pytest

from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, messages, retention
from remails.events import EventType, Tick, make_event
from remails_functions import retry
from tests.factories import Tenant, make_tenant, store_message
from tests.support.recording import RecordingPublisher


async def _message(pool: Pool, tenant: Tenant, status: str, age_days: float, finished: bool) -> UUID:
    message_id = await store_message(pool, tenant, ["a@dest.test", "b@dest.test"])
    await pool.execute(
        "UPDATE messages SET status = $2::message_status,"
        " created_at = now() - make_interval(secs => $3::double precision * 86400),"
        " finished_at = CASE WHEN $4 THEN now() - make_interval(secs => $3::double precision * 86400) END"
        " WHERE id = $1",
        message_id,
        status,
        age_days,
        finished,
    )
    await pool.execute(
        "INSERT INTO attempts (message_id, domain, recipients, duration_ms)"
        " VALUES ($1, 'dest.test', '{}', 1)",
        message_id,
    )
    return message_id


async def _totals(pool: Pool, org_id: UUID) -> dict[tuple[Any, str], int]:
    from datetime import UTC, datetime, timedelta

    rows = await messages.statistics(pool, org_id, datetime.now(UTC) - timedelta(days=366))
    return {(r["day"], r["status"]): r["count"] for r in rows}


async def _ids(pool: Pool, table: str, column: str = "id") -> set[Any]:
    return {r[0] for r in await pool.fetch(f"SELECT {column} FROM {table}")}


async def test_message_rows_past_retention_go_in_batches_and_statistics_stay(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    other = await make_tenant(pool, settings, "other.test")
    old = [
        await _message(pool, tenant, "delivered", 120, True),
        await _message(pool, tenant, "delivered", 120, True),
        await _message(pool, tenant, "bounced", 95, True),
        await _message(pool, other, "failed", 91, True),
        await _message(pool, tenant, "delivered", 91, True),
    ]
    kept = [
        await _message(pool, tenant, "delivered", 89, True),  # within retention
        await _message(pool, tenant, "deferred", 120, False),  # old but not finished: not ours yet
        await _message(pool, other, "delivered", 0, True),
    ]
    before = {org: await _totals(pool, org) for org in (tenant.org_id, other.org_id)}
    removed = []
    while batch := await retention.purge_messages(pool, 90, 2):
        assert batch <= 2  # batched
        removed.append(batch)
    assert removed == [2, 2, 1]
    assert await _ids(pool, "messages") == set(kept)
    assert await _ids(pool, "recipients", "DISTINCT message_id") == set(kept)  # recipients went with them
    assert await _ids(pool, "attempts", "DISTINCT message_id") == set(kept)
    after = {org: await _totals(pool, org) for org in (tenant.org_id, other.org_id)}
    assert after == before  # per organization, day and status
    assert sum(after[tenant.org_id].values()) == 6 and sum(after[other.org_id].values()) == 2
    assert len(old) == 5


async def test_idempotency_keys_webhook_deliveries_and_audit_entries_past_retention_go(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    for key, hours in (("old", 25), ("fresh", 23)):
        await pool.execute(
            "INSERT INTO idempotency_keys (organization_id, key, request_sha256, response, created_at)"
            " VALUES ($1, $2, '\\x00', '{}', now() - make_interval(hours => $3))",
            tenant.org_id,
            key,
            hours,
        )
    endpoint = await pool.fetchval(
        "INSERT INTO webhook_endpoints (project_id, url, events, secret_sealed)"
        " VALUES ($1, 'https://hooks.acme.test/', ARRAY['message.delivered'], '\\x00') RETURNING id",
        tenant.project_id,
    )
    deliveries = {}
    for name, status, days in (
        ("old_done", "delivered", 31),
        ("old_failed", "failed", 40),
        ("old_pending", "pending", 31),  # still owed to the endpoint
        ("fresh_done", "delivered", 29),
    ):
        deliveries[name] = await pool.fetchval(
            "INSERT INTO webhook_deliveries (endpoint_id, event_type, payload, status, created_at)"
            " VALUES ($1, 'message.delivered', '{}', $2, now() - make_interval(days => $3)) RETURNING id",
            endpoint,
            status,
            days,
        )
    audit = {}
    for name, days in (("old", 366), ("older", 400), ("fresh", 364)):
        audit[name] = await pool.fetchval(
            "INSERT INTO audit_log (organization_id, at, actor_kind, action)"
            " VALUES ($1, now() - make_interval(days => $2), 'operator', 'organization.update') RETURNING id",
            tenant.org_id,
            days,
        )

    assert await retention.purge_idempotency_keys(pool, 24, 10) == 1
    assert await _ids(pool, "idempotency_keys", "key") == {"fresh"}
    assert await retention.purge_webhook_deliveries(pool, 30, 10) == 2
    assert await _ids(pool, "webhook_deliveries") == {deliveries["old_pending"], deliveries["fresh_done"]}
    assert await retention.purge_audit_log(pool, 365, 1) == 1  # batched
    assert await retention.purge_audit_log(pool, 365, 1) == 1
    assert await retention.purge_audit_log(pool, 365, 1) == 0
    assert await _ids(pool, "audit_log") == {audit["fresh"]}
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM audit_log")  # outside the purge, nothing goes


@pytest.mark.parametrize(
    ("select", "index"),
    [
        (
            "SELECT id FROM messages WHERE finished_at < now() ORDER BY finished_at LIMIT 10",
            "messages_finished",
        ),
        (
            "SELECT key FROM idempotency_keys WHERE created_at < now() ORDER BY created_at LIMIT 10",
            "idempotency_keys_created",
        ),
        (
            "SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND created_at < now()"
            " ORDER BY created_at LIMIT 10",
            "webhook_deliveries_finished",
        ),
        ("SELECT id FROM audit_log WHERE at < now() ORDER BY at LIMIT 10", "audit_log_at"),
    ],
)
async def test_each_purge_reads_through_an_index(pool: Pool, select: str, index: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # an empty table: force the choice
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + select))
    assert index in plan, plan


async def test_the_sweep_runs_the_purges(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    old = await _message(pool, tenant, "delivered", 100, True)
    fresh = await _message(pool, tenant, "delivered", 1, True)
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    from datetime import UTC, datetime

    await retry.handle_tick(ctx, make_event(EventType.TICK, Tick(at=datetime.now(UTC))))
    assert await _ids(pool, "messages") == {fresh}
    assert old not in await _ids(pool, "messages")
    assert (
        await pool.fetchval(
            "SELECT sum(count) FROM message_daily_stats WHERE organization_id = $1", tenant.org_id
        )
        == 1
    )
