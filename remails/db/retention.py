"""Retention: what is removed once it is older than it may be kept, a batch per tick.

Bodies go after the project's `retention_days`, message rows after
REMAILS_METADATA_RETENTION_DAYS, idempotency keys after 24 h, finished webhook deliveries after
30 days, audit entries after REMAILS_AUDIT_RETENTION_DAYS.

Each purge takes at most `limit` rows, oldest first, through an index on the age column (no
scan of the table), skipping rows another purge holds. Message rows go with their recipients
and attempts, but their counts are first added to `message_daily_stats` in the same
statement, so statistics survive the purge.
"""

from __future__ import annotations

from dataclasses import dataclass

from remails.db.idempotency import IDEMPOTENCY_HOURS
from remails.db.rows import Executor

__all__ = [
    "WEBHOOK_DELIVERY_DAYS",
    "Purged",
    "Retention",
    "purge_audit_log",
    "purge_bodies",
    "purge_expired",
    "purge_idempotency_keys",
    "purge_messages",
    "purge_webhook_deliveries",
]

WEBHOOK_DELIVERY_DAYS = 30


@dataclass(frozen=True)
class Retention:
    """How long each kind of row is kept (from the settings)."""

    message_days: int
    audit_days: int
    webhook_delivery_days: int = WEBHOOK_DELIVERY_DAYS
    idempotency_hours: int = IDEMPOTENCY_HOURS


@dataclass(frozen=True)
class Purged:
    bodies: int
    messages: int
    idempotency_keys: int
    webhook_deliveries: int
    audit_entries: int

    def __bool__(self) -> bool:
        return any(vars(self).values())


def _count(status: str) -> int:
    return int(status.split()[-1])


# purge_bodies: a finished message older than its project's retention loses its bytes; the
# row (status, recipients, attempts) stays for statistics and the customer's log until
# purge_messages removes it.
_BODIES = """
UPDATE messages SET raw = ''::bytea
 WHERE id IN (SELECT m.id FROM messages m JOIN projects p ON p.id = m.project_id
               WHERE m.finished_at < now() - make_interval(days => p.retention_days)
                 AND octet_length(m.raw) > 0
               LIMIT $1 FOR UPDATE OF m SKIP LOCKED)
"""


async def purge_bodies(conn: Executor, limit: int) -> int:
    return _count(await conn.execute(_BODIES, limit))


# purge_messages: finished messages past retention, deleted (recipients and attempts go by
# cascade), their counts per organization, project, day and status added to the daily totals.
_MESSAGES = """
WITH gone AS (
    DELETE FROM messages
     WHERE id IN (SELECT id FROM messages WHERE finished_at < now() - make_interval(days => $1)
                   ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING organization_id, project_id, (created_at AT TIME ZONE 'UTC')::date AS day,
              status::text AS status
), totals AS (
    INSERT INTO message_daily_stats (organization_id, project_id, day, status, count)
    SELECT organization_id, project_id, day, status, count(*) FROM gone GROUP BY 1, 2, 3, 4
    ON CONFLICT (organization_id, day, status, project_id)
    DO UPDATE SET count = message_daily_stats.count + EXCLUDED.count
)
SELECT count(*) FROM gone
"""


async def purge_messages(conn: Executor, days: int, limit: int) -> int:
    removed: int = await conn.fetchval(_MESSAGES, days, limit)
    return removed


_IDEMPOTENCY = """
DELETE FROM idempotency_keys
 WHERE (organization_id, key) IN (
       SELECT organization_id, key FROM idempotency_keys
        WHERE created_at < now() - make_interval(hours => $1)
        ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""


async def purge_idempotency_keys(conn: Executor, hours: int, limit: int) -> int:
    return _count(await conn.execute(_IDEMPOTENCY, hours, limit))


# Finished deliveries only: a pending one is still owed to its endpoint.
_DELIVERIES = """
DELETE FROM webhook_deliveries
 WHERE id IN (SELECT id FROM webhook_deliveries
               WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)
               ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
"""


async def purge_webhook_deliveries(conn: Executor, days: int, limit: int) -> int:
    return _count(await conn.execute(_DELIVERIES, days, limit))


async def purge_audit_log(conn: Executor, days: int, limit: int) -> int:
    """The one DELETE the audit log's trigger lets through (see migration 0013)."""
    removed: int = await conn.fetchval("SELECT purge_audit_log($1, $2)", days, limit)
    return removed


async def purge_expired(conn: Executor, retention: Retention, limit: int) -> Purged:
    """One batch of every purge."""
    return Purged(
        await purge_bodies(conn, limit),
        await purge_messages(conn, retention.message_days, limit),
        await purge_idempotency_keys(conn, retention.idempotency_hours, limit),
        await purge_webhook_deliveries(conn, retention.webhook_delivery_days, limit),
        await purge_audit_log(conn, retention.audit_days, limit),
    )
