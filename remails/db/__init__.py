"""The database: an asyncpg pool on PostgreSQL (embedded when no URL is configured).

Queries live in one module per aggregate (`orgs`, `domains`, `credentials`, `messages`,
`suppressions`, `egress`); no other module writes SQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import asyncpg

from remails.config import Settings
from remails.db import pipeline
from remails.db.embedded import EmbeddedPostgres, start_embedded
from remails.db.migrate import migrate

__all__ = ["Database", "Pool", "connect", "create_pool", "migrate"]

Pool = asyncpg.Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query (RESET ALL, UNLISTEN *, …): we never
    change session state, and that query was a round trip on every release."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    durable: bool = True,
    warm_up: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> Pool:
    """`durable=False`: commits return before the WAL is flushed (synchronous_commit off).
    `warm_up` runs on every new connection before the pool hands it out."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        if warm_up is not None:
            await warm_up(conn)

    pool: Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=_keep_session,
        server_settings={} if durable else {"synchronous_commit": "off"},
    )
    return pool


class Database:
    """The pool plus, when we started it, the embedded server (stopped by `close`)."""

    def __init__(self, pool: Pool, dsn: str, embedded: EmbeddedPostgres | None) -> None:
        self.pool = pool
        self.dsn = dsn
        self._embedded = embedded
        self.pipeline_pool: Pool | None = None

    @property
    def embedded(self) -> EmbeddedPostgres | None:
        return self._embedded

    async def open_pipeline_pool(self, max_size: int) -> Pool:
        # Opened up front: the first burst of mail should not wait for connections.
        self.pipeline_pool = await create_pool(
            self.dsn, min_size=max_size // 2, max_size=max_size, durable=False, warm_up=pipeline.warm_up
        )
        return self.pipeline_pool

    async def close(self) -> None:
        if self.pipeline_pool is not None:
            await self.pipeline_pool.close()
        await self.pool.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)


async def connect(
    settings: Settings, *, min_size: int = 1, max_size: int = 10, run_migrations: bool = True
) -> Database:
    """Start embedded PostgreSQL if needed, open the pool, apply migrations."""
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = await asyncio.to_thread(start_embedded, settings.data_dir / "postgres")
        dsn = embedded.dsn
    pool = await create_pool(dsn, min_size=min_size, max_size=max_size)
    if run_migrations:
        await migrate(pool)
    return Database(pool, dsn, embedded)
