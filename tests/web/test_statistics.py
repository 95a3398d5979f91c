"""Statistics count closed days once, and a later change to one of their messages (a retry, a
late status, a deletion) is never hidden by the stored counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from remails.config import Settings
from remails.db import Pool, messages
from tests.factories import Tenant, make_tenant, store_message


async def _fresh_count(pool: Pool, org_id: UUID, since: datetime) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, count(*) AS count"
        " FROM messages WHERE organization_id = $1 AND created_at >= $2 GROUP BY 1, 2 ORDER BY 1, 2",
        org_id,
        since,
    )
    return [dict(r) for r in rows]


async def _backdated(pool: Pool, tenant: Tenant, days_ago: int, status: str) -> UUID:
    message_id = await store_message(pool, tenant, ["anna@dest.test"])
    await pool.execute(
        "UPDATE messages SET created_at = now() - make_interval(days => $2), status = $3::message_status"
        " WHERE id = $1",
        message_id,
        days_ago,
        status,
    )
    return message_id


async def test_stored_day_counts_always_equal_a_fresh_count(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    other = await make_tenant(pool, settings, "other.test")
    old = [await _backdated(pool, tenant, 5, "delivered") for _ in range(3)]
    await _backdated(pool, tenant, 5, "bounced")
    await _backdated(pool, tenant, 12, "failed")
    await _backdated(pool, other, 5, "delivered")
    await store_message(pool, tenant, ["today@dest.test"])
    since = datetime.now(UTC) - timedelta(days=30)

    first = await messages.statistics(pool, tenant.org_id, since)
    assert first == await _fresh_count(pool, tenant.org_id, since)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM message_days_counted WHERE organization_id = $1", tenant.org_id
        )
        >= 28
    )
    assert (
        await pool.fetchval(
            "SELECT sum(count) FROM message_day_counts WHERE organization_id = $1", tenant.org_id
        )
        == 5
    )
    assert await messages.statistics(pool, tenant.org_id, since) == first  # from the stored counts

    # A late change to a counted day's message (a retry, say) shows at once.
    await pool.execute("UPDATE messages SET status = 'bounced' WHERE id = $1", old[0])
    changed = await messages.statistics(pool, tenant.org_id, since)
    assert changed != first
    assert changed == await _fresh_count(pool, tenant.org_id, since)
    # So does a deletion (a project removed, the retention purge).
    await pool.execute("DELETE FROM messages WHERE id = ANY($1::uuid[])", old[1:])
    assert await messages.statistics(pool, tenant.org_id, since) == await _fresh_count(
        pool, tenant.org_id, since
    )
    # Another organization's counts are its own.
    assert await messages.statistics(pool, other.org_id, since) == await _fresh_count(
        pool, other.org_id, since
    )
