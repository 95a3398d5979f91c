"""Typed reads for assertions: one row that must exist, or a two-column result as a dict."""

from __future__ import annotations

from typing import Any

import asyncpg

from remails.db import Pool


async def one_row(pool: Pool, query: str, *args: Any) -> asyncpg.Record:
    row = await pool.fetchrow(query, *args)
    if row is None:
        raise AssertionError(f"no row for: {query}")
    return row


async def as_dict(pool: Pool, query: str, *args: Any) -> dict[Any, Any]:
    """The first column mapped to the second."""
    return {r[0]: r[1] for r in await pool.fetch(query, *args)}
