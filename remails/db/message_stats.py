"""Messages per UTC day and status: closed days counted once and kept, the rest counted live.

A day is closed once it is over (before today, UTC). Its counts are stored the first time they
are asked for; a trigger forgets them when one of the day's messages changes status or is
deleted (migration 0012), so the answer is always what a fresh count would say.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import asyncpg

__all__ = ["day_status_counts"]

# counted_days: which closed days of the window already have their counts stored.
_COUNTED = """
SELECT day FROM message_days_counted WHERE organization_id = $1 AND day >= $2 AND day < $3
"""

# count_day: count one closed day, under the lock the forgetting trigger takes, unless a
# concurrent reader did it first.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text || $2::date::text, 0))"
_COUNT_DAY = """
WITH marked AS (
    INSERT INTO message_days_counted (organization_id, day) VALUES ($1, $2)
    ON CONFLICT DO NOTHING RETURNING day
)
INSERT INTO message_day_counts (organization_id, day, status, count)
SELECT $1, $2, status, count(*) FROM messages
 WHERE organization_id = $1 AND created_at >= $3 AND created_at < $4
   AND EXISTS (SELECT 1 FROM marked)
 GROUP BY status
"""

_STORED = """
SELECT day, status::text AS status, count FROM message_day_counts
 WHERE organization_id = $1 AND day >= $2 AND day < $3
"""

# live: the parts of the window not counted as closed days — its first, partial day and today —
# as two index ranges (one range with an OR would read every day in between).
_LIVE = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, count(*) AS count
  FROM messages WHERE organization_id = $1 AND created_at >= $2 AND created_at < $3
 GROUP BY 1, 2
UNION ALL
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status::text AS status, count(*) AS count
  FROM messages WHERE organization_id = $1 AND created_at >= greatest($2::timestamptz, $4)
 GROUP BY 1, 2
"""


def _start(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def closed_days(since: datetime, now: datetime) -> tuple[date, date]:
    """The whole days of the window [since, now) that are closed: [first, end)."""
    since_utc = since.astimezone(UTC)
    first = since_utc.date() if since_utc.time() == time() else since_utc.date() + timedelta(days=1)
    end = now.astimezone(UTC).date()
    return first, max(first, end)


async def day_status_counts(pool: asyncpg.Pool, org_id: UUID, since: datetime) -> list[dict[str, Any]]:
    """Messages per UTC day and status created since `since`, ordered by day and status."""
    now: datetime = await pool.fetchval("SELECT now()")
    first, end = closed_days(since, now)
    counted = {r["day"] for r in await pool.fetch(_COUNTED, org_id, first, end)}
    day = first
    while day < end:
        if day not in counted:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK, org_id, day)
                await conn.execute(_COUNT_DAY, org_id, day, _start(day), _start(day + timedelta(days=1)))
        day += timedelta(days=1)
    rows = [dict(r) for r in await pool.fetch(_STORED, org_id, first, end)]
    rows += [dict(r) for r in await pool.fetch(_LIVE, org_id, since, _start(first), _start(end))]
    rows.sort(key=lambda r: (r["day"], r["status"]))
    return rows
