"""What operators read from the database: queue depth, backlogs, migrations, backup runs.

Each query is bounded by an index or a small table; they run at scrape time and for `/readyz`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from remails.db.migrate import available_migrations
from remails.db.rows import required

__all__ = [
    "QUEUE_STATUSES",
    "Figures",
    "Snapshot",
    "database_is_empty",
    "exported_snapshot",
    "pending_migrations",
    "read_figures",
    "readiness_problem",
    "record_backup",
    "restored_counts",
]

# Unfinished message statuses (the partial index `messages_unfinished` covers exactly these).
QUEUE_STATUSES = ("received", "validated", "admitted", "routed", "sending", "attempted", "deferred", "held")


_READY_TIMEOUT = 3.0


@dataclass(frozen=True)
class Figures:
    queue: dict[str, int]
    webhook_backlog: int
    domains: dict[str, int]
    backup_last_success: datetime | None
    backup_last_failure: datetime | None


_QUEUE = """
SELECT status::text AS status, count(*) AS n FROM messages
 WHERE status NOT IN ('delivered', 'bounced', 'failed', 'rejected') GROUP BY status
"""
_WEBHOOKS = "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
_DOMAINS = """
SELECT count(*) FILTER (WHERE verified_at IS NOT NULL) AS verified,
       count(*) FILTER (WHERE verified_at IS NULL) AS unverified
  FROM domains
"""
_BACKUPS = """
SELECT max(finished_at) FILTER (WHERE ok) AS success, max(finished_at) FILTER (WHERE NOT ok) AS failure
  FROM backup_runs
"""


async def read_figures(pool: asyncpg.Pool) -> Figures:
    async with pool.acquire() as conn:
        queue = {status: 0 for status in QUEUE_STATUSES}
        queue.update({r["status"]: r["n"] for r in await conn.fetch(_QUEUE)})
        webhooks = int(await conn.fetchval(_WEBHOOKS))
        domains = await conn.fetchrow(_DOMAINS)
        backups = await conn.fetchrow(_BACKUPS)
    domains, backups = required(domains), required(backups)  # aggregates: always one row
    return Figures(
        queue=queue,
        webhook_backlog=webhooks,
        domains={"verified": domains["verified"], "unverified": domains["unverified"]},
        backup_last_success=backups["success"],
        backup_last_failure=backups["failure"],
    )


async def pending_migrations(pool: asyncpg.Pool) -> list[str]:
    """Migration versions this code has and the database has not applied."""
    exists = await pool.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[str] = set()
    if exists:
        done = {r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")}
    return [version for version, _ in available_migrations() if version not in done]


async def database_is_empty(pool: asyncpg.Pool) -> bool:
    """No table, view, sequence or index in the public schema: a restore may write here."""
    count = await pool.fetchval(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public'"
    )
    return int(count) == 0


async def record_backup(
    pool: asyncpg.Pool, *, ok: bool, destination: str, size: int | None, error: str | None
) -> None:
    await pool.execute(
        "INSERT INTO backup_runs (ok, destination, size_bytes, error) VALUES ($1, $2, $3, $4)",
        ok,
        destination,
        size,
        error,
    )


async def readiness_problem(pool: asyncpg.Pool, role_ready: Callable[[], bool]) -> str | None:
    """None when ready, else what is not (one line, for `/readyz`)."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            await pool.fetchval("SELECT 1")
            pending = await pending_migrations(pool)
    except Exception:
        return "the database is not reachable"
    if pending:
        return f"the database lacks migrations {', '.join(pending)}"
    if not role_ready():
        return "the service is still starting"
    return None


@dataclass(frozen=True)
class Snapshot:
    """An exported snapshot: pg_dump and psql see exactly this state while it is held."""

    name: str
    message_columns: list[str]
    migrations: list[str]


@contextlib.asynccontextmanager
async def exported_snapshot(pool: asyncpg.Pool) -> AsyncIterator[Snapshot]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        name = await conn.fetchval("SELECT pg_export_snapshot()")
        columns = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'messages'::regclass"
            " AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
        )
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        yield Snapshot(str(name), [r["attname"] for r in columns], [r["version"] for r in versions])


async def restored_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """What a restore brought back, for its summary line."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM organizations) AS organizations,"
        " (SELECT count(*) FROM domains) AS domains,"
        " (SELECT count(*) FROM smtp_credentials) AS smtp_credentials,"
        " (SELECT count(*) FROM messages) AS messages"
    )
    return dict(required(row))
