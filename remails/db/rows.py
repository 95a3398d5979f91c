"""Small helpers for asyncpg rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

__all__ = ["Executor", "required", "transaction"]

# Anything that runs a statement: the pool, a connection, or a connection taken from the pool.
Executor = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def required(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row of a statement that always returns one (INSERT/UPDATE … RETURNING on a known id)."""
    if row is None:
        raise LookupError("statement returned no row")
    return row


@asynccontextmanager
async def transaction(executor: Executor) -> AsyncIterator[Executor]:
    """A transaction on a connection of the pool, or (on a connection) a savepoint inside the
    caller's transaction, so a multi-statement change can join an outer one."""
    if isinstance(executor, asyncpg.Pool):
        async with executor.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with executor.transaction():
            yield executor
