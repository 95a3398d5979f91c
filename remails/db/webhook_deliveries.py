"""Webhook deliveries: the outbox of events to post, claimed under a lease and finished once.

Rows are written by `enqueue_webhooks` (SQL) in the statement that changes a message's status,
and by `enqueue_test`. Every transition names the state it expects: a claim takes `pending`
rows that are due and gives them a fresh `lease_id`; only the holder of that lease records the
attempt, so a worker whose lease ran out (and whose delivery was claimed again) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from remails.db.rows import Executor

__all__ = [
    "Delivery",
    "Finished",
    "claim_due",
    "enqueue_test",
    "finish_delivery",
    "list_deliveries",
    "resend",
]


@dataclass(frozen=True)
class Delivery:
    id: UUID
    endpoint_id: UUID
    lease_id: UUID  # only the holder of this lease may record the attempt
    url: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    secrets_sealed: list[bytes]  # the current secret, then the previous one while it is valid


# Shared tail of both claims: lease the picked rows ($3 seconds, a new lease id each).
_TAKE = """
UPDATE webhook_deliveries d
   SET next_attempt_at = now() + make_interval(secs => $3), attempts = d.attempts + 1,
       lease_id = gen_random_uuid()
  FROM webhook_endpoints e
 WHERE d.id IN (SELECT id FROM picked) AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.lease_id, e.url, d.event_type, d.payload, d.attempts,
          e.secret_sealed,
          CASE WHEN e.previous_valid_until > now() THEN e.previous_secret_sealed END AS previous
"""

# claim_due (any message): due deliveries of enabled endpoints only — disabled ones are
# filtered before the limit, so they cannot fill a batch. Fair share: at most $2 per endpoint
# are candidates, and the batch takes every organization's first before anyone's second
# (round robin over organizations, then over their endpoints), so one backlog starves nobody.
_CLAIM_ANY = (
    """
WITH anything_due AS (  -- one probe of the due index: an idle tick visits no endpoint
    SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now() LIMIT 1
), candidate AS (
    SELECT d.id, d.next_attempt_at, d.turn, p.organization_id
      FROM webhook_endpoints e
      JOIN projects p ON p.id = e.project_id
     CROSS JOIN LATERAL (
        SELECT x.id, x.next_attempt_at, row_number() OVER (ORDER BY x.next_attempt_at) AS turn
          FROM webhook_deliveries x
         WHERE x.endpoint_id = e.id AND x.status = 'pending' AND x.next_attempt_at <= now()
         ORDER BY x.next_attempt_at LIMIT $2) d
     WHERE e.enabled AND EXISTS (SELECT 1 FROM anything_due)
), ranked AS (
    SELECT id, next_attempt_at,
           row_number() OVER (PARTITION BY organization_id ORDER BY turn, next_attempt_at) AS org_turn
      FROM candidate
), picked AS (
    SELECT x.id FROM webhook_deliveries x
     WHERE x.id IN (SELECT id FROM ranked ORDER BY org_turn, next_attempt_at LIMIT $1)
       AND x.status = 'pending' AND x.next_attempt_at <= now()
     FOR UPDATE SKIP LOCKED
)
"""
    + _TAKE
)

# claim_due (one message): its due deliveries to enabled endpoints (one project, so one
# organization: nothing to share).
_CLAIM_MESSAGE = (
    """
WITH picked AS (
    SELECT x.id FROM webhook_deliveries x JOIN webhook_endpoints e ON e.id = x.endpoint_id
     WHERE x.message_id = $2 AND x.status = 'pending' AND x.next_attempt_at <= now() AND e.enabled
     ORDER BY x.next_attempt_at LIMIT $1
     FOR UPDATE OF x SKIP LOCKED
)
"""
    + _TAKE
)


async def claim_due(
    conn: Executor, message_id: UUID | None, limit: int, per_endpoint: int, lease_seconds: float
) -> list[Delivery]:
    """Take up to `limit` due deliveries (of one message, or any) for `lease_seconds`, so
    another worker does not send them meanwhile; after a crash they are taken again."""
    if message_id is None:
        rows = await conn.fetch(_CLAIM_ANY, limit, per_endpoint, lease_seconds)
    else:
        rows = await conn.fetch(_CLAIM_MESSAGE, limit, message_id, lease_seconds)
    return [
        Delivery(
            r["id"],
            r["endpoint_id"],
            r["lease_id"],
            r["url"],
            r["event_type"],
            r["payload"],
            r["attempts"],
            [r["secret_sealed"], *([r["previous"]] if r["previous"] is not None else [])],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Finished:
    """What recording one attempt did to its endpoint."""

    enabled: bool
    disabled_reason: str | None
    disabled_now: bool  # this failure switched the endpoint off
    dropped: int  # its other pending deliveries, dropped with it


# finish_delivery: record one attempt — only while `pending` under the caller's lease. On
# success the endpoint's failing run ends; on failure it starts (or goes on), and an endpoint
# failing for longer than $7 seconds is disabled: its pending deliveries are dropped and the
# organization is told, once. The endpoint row is locked first (then deliveries), the same
# order everywhere, so two finishes of one endpoint cannot deadlock.
_FINISH = """
WITH e0 AS (
    SELECT e.id,
           COALESCE(NOT $2 AND e.enabled AND e.failing_since < now() - make_interval(secs => $7),
                    false) AS disable
      FROM webhook_endpoints e
     WHERE e.id = (SELECT endpoint_id FROM webhook_deliveries WHERE id = $1)
     FOR UPDATE
), d AS (
    UPDATE webhook_deliveries x
       SET status = CASE WHEN $2 THEN 'delivered' WHEN $6::timestamptz IS NULL THEN 'failed'
                         WHEN e0.disable THEN 'dropped' ELSE 'pending' END,
           next_attempt_at = COALESCE($6, x.next_attempt_at), last_status_code = $3, last_error = $4,
           last_latency_ms = $5,
           finished_at = CASE WHEN $2 OR $6::timestamptz IS NULL OR e0.disable THEN now() END,
           lease_id = NULL
      FROM e0
     WHERE x.id = $1 AND x.endpoint_id = e0.id AND x.status = 'pending' AND x.lease_id = $8
    RETURNING x.endpoint_id
), e AS (
    UPDATE webhook_endpoints w
       SET failing_since = CASE WHEN $2 THEN NULL ELSE COALESCE(w.failing_since, now()) END,
           enabled = w.enabled AND NOT e0.disable,
           disabled_reason = CASE WHEN e0.disable
                                  THEN 'failing continuously since ' || w.failing_since::text
                                  ELSE w.disabled_reason END
      FROM e0 JOIN d ON d.endpoint_id = e0.id
     WHERE w.id = e0.id
    RETURNING w.id, w.enabled, w.disabled_reason, w.url, w.project_id, e0.disable
), dropped AS (
    UPDATE webhook_deliveries x
       SET status = 'dropped', finished_at = now(), last_error = 'endpoint disabled', lease_id = NULL
      FROM e
     WHERE e.disable AND x.endpoint_id = e.id AND x.status = 'pending' AND x.id <> $1
    RETURNING x.id
), n AS (
    INSERT INTO notifications (organization_id, kind, message, subject_id)
    SELECT p.organization_id, 'webhook.disabled',
           'Webhook endpoint ' || e.url || ' was disabled: ' || e.disabled_reason, e.id
      FROM e JOIN projects p ON p.id = e.project_id
     WHERE e.disable
)
SELECT enabled, disabled_reason, disable, (SELECT count(*) FROM dropped) AS dropped FROM e
"""


async def finish_delivery(
    conn: Executor,
    delivery_id: UUID,
    lease_id: UUID,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    latency_ms: int,
    next_attempt_at: datetime | None,
    disable_after_seconds: float,
) -> Finished | None:
    """None when the lease was lost (the delivery was claimed again, resent or dropped):
    nothing was recorded."""
    row = await conn.fetchrow(
        _FINISH,
        delivery_id,
        delivered,
        status_code,
        error,
        latency_ms,
        next_attempt_at,
        disable_after_seconds,
        lease_id,
    )
    if row is None:
        return None
    return Finished(bool(row["enabled"]), row["disabled_reason"], bool(row["disable"]), int(row["dropped"]))


async def list_deliveries(pool: Executor, endpoint_id: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, event_type, message_id, status, attempts, last_status_code, last_error, last_latency_ms,"
        " next_attempt_at, created_at, finished_at FROM webhook_deliveries WHERE endpoint_id = $1"
        " ORDER BY created_at DESC LIMIT $2",
        endpoint_id,
        limit,
    )
    return [dict(r) for r in rows]


# resend: back to pending, due now, with the same webhook-id — for an enabled endpoint, and
# not while an attempt holds a live lease (that attempt's result would be lost).
_RESEND = """
UPDATE webhook_deliveries d
   SET status = 'pending', next_attempt_at = now(), attempts = 0, finished_at = NULL, lease_id = NULL
  FROM webhook_endpoints e
 WHERE d.id = $1 AND d.endpoint_id = $2 AND e.id = d.endpoint_id AND e.enabled
   AND (d.status <> 'pending' OR d.lease_id IS NULL OR d.next_attempt_at <= now())
"""


async def resend(
    pool: Executor, endpoint_id: UUID, delivery_id: UUID
) -> Literal["resent", "busy", "not_found"]:
    """`busy`: the endpoint is disabled or an attempt is in flight."""
    if await pool.execute(_RESEND, delivery_id, endpoint_id) == "UPDATE 1":
        return "resent"
    exists = await pool.fetchval(
        "SELECT true FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2", delivery_id, endpoint_id
    )
    return "busy" if exists else "not_found"


async def enqueue_test(pool: Executor, endpoint_id: UUID, payload: dict[str, Any]) -> UUID | None:
    """A `webhook.test` delivery; None when the endpoint is disabled (or gone)."""
    delivery_id: UUID | None = await pool.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_type, payload)"
        " SELECT id, 'webhook.test', $2 FROM webhook_endpoints WHERE id = $1 AND enabled RETURNING id",
        endpoint_id,
        payload,
    )
    return delivery_id
