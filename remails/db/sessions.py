"""Dashboard sign-in sessions: a random token in the cookie, its SHA-256 digest here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.crypto import digest, generate_secret
from remails.db.rows import Executor, required

__all__ = [
    "Session",
    "create_session",
    "delete_session",
    "delete_user_sessions",
    "get_session",
    "purge_expired",
]


@dataclass(frozen=True)
class Session:
    id: UUID
    user_id: UUID
    second_factor: bool  # False: password checked, the two-factor code is still due
    created_at: datetime
    expires_at: datetime


_COLUMNS = "id, user_id, second_factor, created_at, expires_at"


async def create_session(
    pool: Executor, user_id: UUID, *, second_factor: bool, lifetime_seconds: float
) -> tuple[Session, str]:
    """A new session and its token (for the cookie; never stored)."""
    token = generate_secret(32)
    row = await pool.fetchrow(
        "INSERT INTO user_sessions (user_id, token_sha256, second_factor, expires_at)"
        f" VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING {_COLUMNS}",
        user_id,
        digest(token),
        second_factor,
        lifetime_seconds,
    )
    return Session(**required(row)), token


# get_session: a live session by token; marks it seen (at most once a minute, to spare writes).
_GET = f"""
WITH s AS (
    SELECT {_COLUMNS}, last_seen_at FROM user_sessions WHERE token_sha256 = $1 AND expires_at > now()
), touch AS (
    UPDATE user_sessions SET last_seen_at = now()
     WHERE id IN (SELECT id FROM s WHERE last_seen_at < now() - interval '1 minute')
)
SELECT {_COLUMNS} FROM s
"""


async def get_session(pool: asyncpg.Pool, token: str) -> Session | None:
    row = await pool.fetchrow(_GET, digest(token))
    return Session(**row) if row else None


async def delete_session(pool: Executor, token: str) -> None:
    await pool.execute("DELETE FROM user_sessions WHERE token_sha256 = $1", digest(token))


async def delete_user_sessions(pool: Executor, user_id: UUID) -> int:
    """Sign the user out everywhere; the number of sessions ended."""
    status: str = await pool.execute("DELETE FROM user_sessions WHERE user_id = $1", user_id)
    return int(status.split()[-1])


async def purge_expired(pool: asyncpg.Pool) -> None:
    await pool.execute("DELETE FROM user_sessions WHERE expires_at < now()")
    await pool.execute("DELETE FROM login_failures WHERE failed_at < now() - interval '1 day'")
