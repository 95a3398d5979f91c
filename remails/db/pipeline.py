"""Message state transitions: each a guarded UPDATE naming the state it expects.

Zero rows updated is a normal answer — another handler (or a duplicate event) moved the
message first — and callers then do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

__all__ = ["advance"]

Conn = asyncpg.Pool | asyncpg.Connection

# advance: expected → new, only if the message is still in one of the expected states.
_ADVANCE = """
UPDATE messages SET status = $3, reason = COALESCE($4, reason), updated_at = now()
 WHERE id = $1 AND status = ANY($2::message_status[])
RETURNING id
"""


async def advance(
    conn: Conn, message_id: UUID, expected: Sequence[str], new: str, reason: str | None = None
) -> bool:
    return await conn.fetchval(_ADVANCE, message_id, list(expected), new, reason) is not None
