"""One embedded PostgreSQL per test session; each test gets a fresh database from a template."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from remails.db import create_pool
from remails.db.embedded import EmbeddedPostgres, start_embedded
from remails.db.migrate import migrate

TEMPLATE = "remails_template"
_counter = itertools.count()


def dsn_for(base_dsn: str, database: str) -> str:
    parts = urlsplit(base_dsn)
    return urlunsplit(parts._replace(path="/" + database))


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.server: EmbeddedPostgres = start_embedded(root / "pg")
        self.base_dsn = self.server.dsn

    async def prepare_template(self) -> None:
        conn = await asyncpg.connect(self.base_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        pool = await create_pool(dsn_for(self.base_dsn, TEMPLATE), max_size=1)
        try:
            await migrate(pool)
        finally:
            await pool.close()

    async def new_database(self) -> str:
        name = f"t{next(_counter)}"
        conn = await asyncpg.connect(self.base_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name}")
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        finally:
            await conn.close()
        return dsn_for(self.base_dsn, name)

    def stop(self) -> None:
        self.server.stop()
