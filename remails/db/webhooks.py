"""Webhook endpoints and their delivery outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required

__all__ = [
    "Delivery",
    "Endpoint",
    "claim_due",
    "create_endpoint",
    "delete_endpoint",
    "enqueue_test",
    "finish_delivery",
    "get_endpoint",
    "list_deliveries",
    "list_endpoints",
    "list_notifications",
    "resend",
    "rotate_secret",
    "update_endpoint",
]


@dataclass(frozen=True)
class Endpoint:
    id: UUID
    project_id: UUID
    organization_id: UUID
    url: str
    events: list[str]
    enabled: bool
    failing_since: datetime | None
    disabled_reason: str | None
    created_at: datetime


_ENDPOINT = """
SELECT e.id, e.project_id, p.organization_id, e.url, e.events, e.enabled, e.failing_since,
       e.disabled_reason, e.created_at
  FROM webhook_endpoints e JOIN projects p ON p.id = e.project_id
"""


def _endpoint(row: asyncpg.Record) -> Endpoint:
    return Endpoint(**{**dict(row), "events": list(row["events"])})


async def create_endpoint(
    pool: asyncpg.Pool, endpoint_id: UUID, project_id: UUID, url: str, events: list[str], secret_sealed: bytes
) -> Endpoint:
    new_id = await pool.fetchval(
        "INSERT INTO webhook_endpoints (id, project_id, url, events, secret_sealed)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        endpoint_id,
        project_id,
        url,
        events,
        secret_sealed,
    )
    return _endpoint(required(await pool.fetchrow(_ENDPOINT + " WHERE e.id = $1", new_id)))


async def get_endpoint(pool: Executor, endpoint_id: UUID) -> Endpoint | None:
    row = await pool.fetchrow(_ENDPOINT + " WHERE e.id = $1", endpoint_id)
    return _endpoint(row) if row else None


async def list_endpoints(pool: asyncpg.Pool, project_id: UUID) -> list[Endpoint]:
    rows = await pool.fetch(_ENDPOINT + " WHERE e.project_id = $1 ORDER BY e.created_at", project_id)
    return [_endpoint(r) for r in rows]


async def update_endpoint(
    pool: asyncpg.Pool, endpoint_id: UUID, *, url: str | None, events: list[str] | None, enabled: bool | None
) -> Endpoint | None:
    """Re-enabling clears the failure record, so the 5-day count starts again."""
    await pool.execute(
        "UPDATE webhook_endpoints SET url = COALESCE($2, url), events = COALESCE($3, events),"
        " enabled = COALESCE($4, enabled),"
        " failing_since = CASE WHEN $4 THEN NULL ELSE failing_since END,"
        " disabled_reason = CASE WHEN $4 THEN NULL ELSE disabled_reason END, updated_at = now()"
        " WHERE id = $1",
        endpoint_id,
        url,
        events,
        enabled,
    )
    return await get_endpoint(pool, endpoint_id)


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: UUID) -> bool:
    return await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id) == "DELETE 1"


async def rotate_secret(
    pool: asyncpg.Pool, endpoint_id: UUID, new_sealed: bytes, grace_seconds: float
) -> bool:
    """The new secret signs from now on; the old one stays valid for `grace_seconds`."""
    status = await pool.execute(
        "UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed, secret_sealed = $2,"
        " previous_valid_until = now() + make_interval(secs => $3), updated_at = now() WHERE id = $1",
        endpoint_id,
        new_sealed,
        grace_seconds,
    )
    return status == "UPDATE 1"


@dataclass(frozen=True)
class Delivery:
    id: UUID
    endpoint_id: UUID
    url: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    secrets_sealed: list[bytes]  # the current secret, then the previous one while it is valid


# claim_due: pending deliveries that are due (of one message, or any), taken for `lease`
# seconds so another worker does not send them at the same time. A disabled endpoint's
# deliveries are not taken.
_CLAIM = """
UPDATE webhook_deliveries d
   SET next_attempt_at = now() + make_interval(secs => $3), attempts = d.attempts + 1
  FROM webhook_endpoints e
 WHERE d.id IN (SELECT id FROM webhook_deliveries
                 WHERE status = 'pending' AND next_attempt_at <= now()
                   AND ($1::uuid IS NULL OR message_id = $1)
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
   AND e.id = d.endpoint_id AND e.enabled
RETURNING d.id, d.endpoint_id, e.url, d.event_type, d.payload, d.attempts,
          e.secret_sealed,
          CASE WHEN e.previous_valid_until > now() THEN e.previous_secret_sealed END AS previous
"""


async def claim_due(
    conn: Executor, message_id: UUID | None, limit: int, lease_seconds: float
) -> list[Delivery]:
    rows = await conn.fetch(_CLAIM, message_id, limit, lease_seconds)
    return [
        Delivery(
            r["id"],
            r["endpoint_id"],
            r["url"],
            r["event_type"],
            r["payload"],
            r["attempts"],
            [r["secret_sealed"], *([r["previous"]] if r["previous"] is not None else [])],
        )
        for r in rows
    ]


# finish_delivery: record one attempt; on success the endpoint's failing run ends, on failure
# it starts (or goes on) and an endpoint failing for longer than `disable_after` is disabled.
_FINISH = """
WITH d AS (
    UPDATE webhook_deliveries
       SET status = CASE WHEN $2 THEN 'delivered' WHEN $6::timestamptz IS NULL THEN 'failed'
                         ELSE 'pending' END,
           next_attempt_at = COALESCE($6, next_attempt_at), last_status_code = $3, last_error = $4,
           last_latency_ms = $5, finished_at = CASE WHEN $2 OR $6::timestamptz IS NULL THEN now() END
     WHERE id = $1
    RETURNING endpoint_id
), before AS (
    SELECT e.id, e.enabled FROM webhook_endpoints e JOIN d ON e.id = d.endpoint_id
), e AS (
    UPDATE webhook_endpoints e
       SET failing_since = CASE WHEN $2 THEN NULL ELSE COALESCE(e.failing_since, now()) END,
           enabled = CASE WHEN NOT $2 AND e.failing_since < now() - make_interval(secs => $7) THEN false
                          ELSE e.enabled END,
           disabled_reason = CASE WHEN NOT $2 AND e.failing_since < now() - make_interval(secs => $7)
                                  THEN 'failing continuously since ' || e.failing_since::text
                                  ELSE e.disabled_reason END
      FROM d WHERE e.id = d.endpoint_id
    RETURNING e.id, e.enabled, e.disabled_reason, e.url, e.project_id
), n AS (
    -- The organization is told once, when the endpoint is switched off.
    INSERT INTO notifications (organization_id, kind, message, subject_id)
    SELECT p.organization_id, 'webhook_endpoint_disabled',
           'Webhook endpoint ' || e.url || ' was disabled: ' || e.disabled_reason, e.id
      FROM e JOIN before b ON b.id = e.id JOIN projects p ON p.id = e.project_id
     WHERE b.enabled AND NOT e.enabled
)
SELECT enabled, disabled_reason FROM e
"""


async def finish_delivery(
    conn: Executor,
    delivery_id: UUID,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    latency_ms: int,
    next_attempt_at: datetime | None,
    disable_after_seconds: float,
) -> tuple[bool, str | None]:
    """(endpoint still enabled, why disabled)."""
    row = await conn.fetchrow(
        _FINISH,
        delivery_id,
        delivered,
        status_code,
        error,
        latency_ms,
        next_attempt_at,
        disable_after_seconds,
    )
    return (True, None) if row is None else (bool(row["enabled"]), row["disabled_reason"])


async def list_deliveries(pool: asyncpg.Pool, endpoint_id: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, event_type, message_id, status, attempts, last_status_code, last_error, last_latency_ms,"
        " next_attempt_at, created_at, finished_at FROM webhook_deliveries WHERE endpoint_id = $1"
        " ORDER BY created_at DESC LIMIT $2",
        endpoint_id,
        limit,
    )
    return [dict(r) for r in rows]


async def resend(pool: asyncpg.Pool, endpoint_id: UUID, delivery_id: UUID) -> bool:
    """Send a delivery again now, with the same webhook-id."""
    status = await pool.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), attempts = 0,"
        " finished_at = NULL WHERE id = $1 AND endpoint_id = $2",
        delivery_id,
        endpoint_id,
    )
    return status == "UPDATE 1"


async def enqueue_test(pool: asyncpg.Pool, endpoint_id: UUID, payload: dict[str, Any]) -> UUID:
    delivery_id: UUID = await pool.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, event_type, payload) VALUES ($1, 'webhook.test', $2)"
        " RETURNING id",
        endpoint_id,
        payload,
    )
    return delivery_id


async def list_notifications(pool: asyncpg.Pool, org_id: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, kind, message, subject_id, created_at FROM notifications WHERE organization_id = $1"
        " ORDER BY created_at DESC LIMIT $2",
        org_id,
        limit,
    )
    return [dict(r) for r in rows]
