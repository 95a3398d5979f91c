"""Suppressed addresses per organization: never sent to again until removed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required

__all__ = ["Suppression", "add_suppression", "delete_suppression", "list_suppressions", "suppressed_among"]


@dataclass(frozen=True)
class Suppression:
    address: str
    reason: str
    created_at: datetime


async def list_suppressions(
    pool: asyncpg.Pool, org_id: UUID, *, after: str | None, limit: int
) -> list[Suppression]:
    rows = await pool.fetch(
        "SELECT address, reason, created_at FROM suppressions WHERE organization_id = $1"
        " AND ($2::text IS NULL OR address > $2) ORDER BY address LIMIT $3",
        org_id,
        after,
        limit,
    )
    return [Suppression(**r) for r in rows]


async def add_suppression(pool: Executor, org_id: UUID, address: str, reason: str) -> Suppression:
    row = required(
        await pool.fetchrow(
            "INSERT INTO suppressions (organization_id, address, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT (organization_id, address) DO UPDATE SET reason = EXCLUDED.reason"
            " RETURNING address, reason, created_at",
            org_id,
            address.lower(),
            reason,
        )
    )
    return Suppression(**row)


async def delete_suppression(pool: Executor, org_id: UUID, address: str) -> bool:
    status = await pool.execute(
        "DELETE FROM suppressions WHERE organization_id = $1 AND address = $2", org_id, address.lower()
    )
    return status == "DELETE 1"


async def suppressed_among(pool: Executor, org_id: UUID, addresses: list[str]) -> dict[str, str]:
    """Which of `addresses` (lower-cased) are on the organization's list now, with the reason."""
    rows = await pool.fetch(
        "SELECT address, reason FROM suppressions WHERE organization_id = $1 AND address = ANY($2::text[])",
        org_id,
        [a.lower() for a in addresses],
    )
    return {r["address"]: r["reason"] for r in rows}
