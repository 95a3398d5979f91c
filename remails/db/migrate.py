"""Plain SQL migrations from `remails/migrations/NNNN_name.sql`, applied in order, once each.

An advisory lock serialises concurrent start-ups; each file runs in its own transaction and
is recorded in `schema_migrations`.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

__all__ = ["available_migrations", "migrate"]

_LOCK_KEY = 0x72656D61  # "rema": one advisory lock id for the whole service


def available_migrations() -> list[tuple[str, str]]:
    """(version, sql) for every migration file, sorted by name."""
    folder = resources.files("remails") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply what is missing; return the versions applied now (empty when up to date)."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in available_migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
