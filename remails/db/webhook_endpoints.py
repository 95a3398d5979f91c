"""Webhook endpoints: where a project's outcome events are posted, with their sealed secrets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required

__all__ = [
    "Endpoint",
    "create_endpoint",
    "delete_endpoint",
    "get_endpoint",
    "list_endpoints",
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
    pool: Executor, endpoint_id: UUID, project_id: UUID, url: str, events: list[str], secret_sealed: bytes
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


async def list_endpoints(pool: Executor, project_id: UUID) -> list[Endpoint]:
    rows = await pool.fetch(_ENDPOINT + " WHERE e.project_id = $1 ORDER BY e.created_at", project_id)
    return [_endpoint(r) for r in rows]


async def update_endpoint(
    pool: Executor, endpoint_id: UUID, *, url: str | None, events: list[str] | None, enabled: bool | None
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


async def delete_endpoint(pool: Executor, endpoint_id: UUID) -> bool:
    return await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id) == "DELETE 1"


async def rotate_secret(pool: Executor, endpoint_id: UUID, new_sealed: bytes, grace_seconds: float) -> bool:
    """The new secret signs from now on; the old one stays valid for `grace_seconds`."""
    status = await pool.execute(
        "UPDATE webhook_endpoints SET previous_secret_sealed = secret_sealed, secret_sealed = $2,"
        " previous_valid_until = now() + make_interval(secs => $3), updated_at = now() WHERE id = $1",
        endpoint_id,
        new_sealed,
        grace_seconds,
    )
    return status == "UPDATE 1"
