"""Small helpers for asyncpg rows."""

from __future__ import annotations

import asyncpg

__all__ = ["Executor", "required"]

# Anything that runs a statement: the pool, a connection, or a connection taken from the pool.
Executor = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def required(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row of a statement that always returns one (INSERT/UPDATE … RETURNING on a known id)."""
    if row is None:
        raise LookupError("statement returned no row")
    return row
