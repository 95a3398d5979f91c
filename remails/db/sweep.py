"""The sweep: find messages that are due or stuck and move them so an event can be re-emitted.

Every query is bounded (`limit`) and skips rows another sweeper holds, so overlapping ticks
do not fight. Each returns the messages it touched; the caller emits their events.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

__all__ = ["Swept", "due_deferred", "expire_overdue", "requeue_held", "restart_stuck"]


@dataclass(frozen=True)
class Swept:
    id: UUID
    organization_id: UUID
    project_id: UUID
    status: str
    outbound_ip: str | None


_RETURNING = "RETURNING id, organization_id, project_id, status::text, host(outbound_ip) AS outbound_ip"


def _rows(rows: list[asyncpg.Record]) -> list[Swept]:
    return [
        Swept(r["id"], r["organization_id"], r["project_id"], r["status"], r["outbound_ip"]) for r in rows
    ]


# due_deferred: deferred and due → admitted, to be routed again (the IP may have changed).
_DUE = f"""
UPDATE messages SET status = 'admitted', updated_at = now()
 WHERE id IN (SELECT id FROM messages
               WHERE status = 'deferred' AND next_attempt_at <= now() AND expires_at > now()
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
{_RETURNING}
"""


async def due_deferred(pool: asyncpg.Pool, limit: int) -> list[Swept]:
    return _rows(await pool.fetch(_DUE, limit))


# expire_overdue: a message past its lifetime → failed, with its waiting recipients, whatever
# unfinished state it is in — a sending lease only once it has run out (the holder may still be
# recording). Without this a message that keeps failing before its attempt is recorded would
# go round routing and sending for ever.
_EXPIRE = f"""
WITH m AS (
    UPDATE messages SET status = 'failed', updated_at = now(), finished_at = now(),
           lease_owner = NULL, lease_until = NULL,
           reason = 'not delivered within the message lifetime'
     WHERE id IN (SELECT id FROM messages
                   WHERE expires_at <= now()
                     AND (status IN ('received', 'validated', 'admitted', 'routed', 'attempted',
                                     'deferred', 'held')
                          OR (status = 'sending' AND lease_until < now()))
                   LIMIT $1 FOR UPDATE SKIP LOCKED)
    {_RETURNING}
), r AS (
    UPDATE recipients SET status = 'failed', updated_at = now()
     WHERE message_id IN (SELECT id FROM m) AND status IN ('pending', 'deferred')
    RETURNING 1
)
SELECT m.*, enqueue_webhooks(m.id, 'message.failed') FROM m WHERE (SELECT count(*) FROM r) >= 0
"""


async def expire_overdue(pool: asyncpg.Pool, limit: int) -> list[Swept]:
    return _rows(await pool.fetch(_EXPIRE, limit))


# restart_stuck: a message that has not moved for `older` seconds lost its event (or its
# sender crashed). routed and expired sending leases go back to admitted (route again);
# the other states keep their status and only get updated_at bumped, so each is re-emitted
# once per `older` seconds, not on every tick. Past its lifetime a message is expire_overdue's.
_STUCK = f"""
UPDATE messages
   SET status = CASE WHEN status IN ('routed', 'sending') THEN 'admitted'::message_status ELSE status END,
       lease_owner = NULL, lease_until = NULL, updated_at = now()
 WHERE id IN (SELECT id FROM messages
               WHERE ((status IN ('received', 'validated', 'admitted', 'routed', 'attempted')
                       AND updated_at < now() - make_interval(secs => $1))
                      OR (status = 'sending' AND lease_until < now()))
                 AND expires_at > now()
               ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
{_RETURNING}
"""


async def restart_stuck(pool: asyncpg.Pool, older: float, limit: int) -> list[Swept]:
    return _rows(await pool.fetch(_STUCK, older, limit))


# requeue_held: held for quota, and the organization has quota again (a new month, a raise);
# or held by a block that was lifted, resuming where it stopped (resume_status).
_HELD = f"""
UPDATE messages SET status = COALESCE(resume_status, 'validated'), resume_status = NULL, reason = NULL,
       updated_at = now()
 WHERE id IN (SELECT m.id FROM messages m JOIN organizations o ON o.id = m.organization_id
               WHERE m.status = 'held' AND o.block_status = 'not_blocked'
                 AND (m.resume_status IN ('received', 'admitted')
                      OR o.quota_period_start < date_trunc('month', now())::date
                      OR o.quota_used < o.monthly_quota)
               ORDER BY m.created_at LIMIT $1 FOR UPDATE OF m SKIP LOCKED)
{_RETURNING}
"""


async def requeue_held(pool: asyncpg.Pool, limit: int) -> list[Swept]:
    return _rows(await pool.fetch(_HELD, limit))
