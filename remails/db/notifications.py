"""Notifications: what an organization must be told about (an endpoint disabled, …).

Rows are written by the statement that causes them (see `webhook_deliveries.finish_delivery`);
this module reads them.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from remails.db.rows import Executor

__all__ = ["list_notifications"]


async def list_notifications(pool: Executor, org_id: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, kind, message, subject_id, created_at FROM notifications WHERE organization_id = $1"
        " ORDER BY created_at DESC LIMIT $2",
        org_id,
        limit,
    )
    return [dict(r) for r in rows]
