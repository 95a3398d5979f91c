"""Users, their memberships in organizations, recovery codes, invitations and sign-in failures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.crypto import digest
from remails.db.rows import Executor, required, transaction
from remails.errors import Conflict

__all__ = [
    "Invitation",
    "Member",
    "Membership",
    "User",
    "accept_invitation",
    "clear_login_failures",
    "count_admins",
    "count_login_failures",
    "count_recent_resets",
    "create_invitation",
    "create_password_reset",
    "create_user",
    "delete_membership",
    "disable_totp",
    "enable_totp",
    "get_invitation",
    "get_membership",
    "get_user",
    "get_user_by_email",
    "list_invitations",
    "list_members",
    "list_memberships",
    "lock_login",
    "record_login_failure",
    "reset_is_open",
    "set_membership",
    "set_password",
    "set_totp_pending",
    "spend_recovery_code",
    "spend_totp_step",
    "use_password_reset",
    "withdraw_login_failure",
]


@dataclass(frozen=True)
class User:
    id: UUID
    email: str
    password_hash: str
    operator: bool
    totp_sealed: bytes | None
    totp_pending_sealed: bytes | None
    totp_last_step: int | None
    created_at: datetime

    @property
    def two_factor(self) -> bool:
        return self.totp_sealed is not None


@dataclass(frozen=True)
class Membership:
    organization_id: UUID
    organization_name: str
    role: str


@dataclass(frozen=True)
class Member:
    user_id: UUID
    email: str
    role: str
    created_at: datetime


@dataclass(frozen=True)
class Invitation:
    id: UUID
    organization_id: UUID
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


_USER = "id, email, password_hash, operator, totp_sealed, totp_pending_sealed, totp_last_step, created_at"
_INVITATION = "id, organization_id, email, role::text, created_at, expires_at, accepted_at"


async def create_user(pool: Executor, email: str, password_hash: str, *, operator: bool = False) -> User:
    """A new user; Conflict (field `email`) when the address has an account."""
    try:
        row = await pool.fetchrow(
            f"INSERT INTO users (email, password_hash, operator) VALUES ($1, $2, $3) RETURNING {_USER}",
            email,
            password_hash,
            operator,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("a user with this e-mail address exists", field="email") from None
    return User(**required(row))


async def get_user(pool: asyncpg.Pool, user_id: UUID) -> User | None:
    row = await pool.fetchrow(f"SELECT {_USER} FROM users WHERE id = $1", user_id)
    return User(**row) if row else None


async def get_user_by_email(pool: asyncpg.Pool, email: str) -> User | None:
    row = await pool.fetchrow(f"SELECT {_USER} FROM users WHERE lower(email) = lower($1)", email)
    return User(**row) if row else None


async def set_password(pool: Executor, user_id: UUID, password_hash: str) -> bool:
    """A new password ends every session of the user (a reset locks out whoever had it)."""
    async with transaction(pool) as conn:
        status = await conn.execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1", user_id, password_hash
        )
        await conn.execute("DELETE FROM user_sessions WHERE user_id = $1", user_id)
    return bool(status == "UPDATE 1")


async def set_totp_pending(pool: Executor, user_id: UUID, sealed: bytes | None) -> None:
    await pool.execute(
        "UPDATE users SET totp_pending_sealed = $2, updated_at = now() WHERE id = $1", user_id, sealed
    )


# enable_totp: the pending secret becomes the secret (only if it is still the one confirmed),
# and the recovery codes are replaced, in one statement.
_ENABLE_TOTP = """
WITH u AS (
    UPDATE users SET totp_sealed = totp_pending_sealed, totp_pending_sealed = NULL,
                     totp_last_step = $3, updated_at = now()
     WHERE id = $1 AND totp_pending_sealed = $2
    RETURNING id
), gone AS (
    DELETE FROM recovery_codes WHERE user_id IN (SELECT id FROM u)
)
INSERT INTO recovery_codes (user_id, code_sha256)
SELECT u.id, c FROM u, unnest($4::bytea[]) AS c
RETURNING user_id
"""


async def enable_totp(
    pool: Executor, user_id: UUID, pending: bytes, step: int, recovery_codes: list[str]
) -> bool:
    rows = await pool.fetch(_ENABLE_TOTP, user_id, pending, step, [digest(c) for c in recovery_codes])
    return bool(rows)


async def disable_totp(pool: Executor, user_id: UUID) -> None:
    async with transaction(pool) as conn:
        await conn.execute(
            "UPDATE users SET totp_sealed = NULL, totp_pending_sealed = NULL, totp_last_step = NULL,"
            " updated_at = now() WHERE id = $1",
            user_id,
        )
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user_id)


async def spend_totp_step(pool: asyncpg.Pool, user_id: UUID, step: int) -> bool:
    """Record a used code's step; False when it (or a later one) was used already: a replay."""
    status = await pool.execute(
        "UPDATE users SET totp_last_step = $2 WHERE id = $1"
        " AND (totp_last_step IS NULL OR totp_last_step < $2)",
        user_id,
        step,
    )
    return bool(status == "UPDATE 1")


async def spend_recovery_code(pool: asyncpg.Pool, user_id: UUID, code: str) -> bool:
    status = await pool.execute(
        "UPDATE recovery_codes SET used_at = now()"
        " WHERE user_id = $1 AND code_sha256 = $2 AND used_at IS NULL",
        user_id,
        digest(code),
    )
    return bool(status == "UPDATE 1")


async def lock_login(conn: Executor, email: str) -> None:
    """Sign-in attempts for one address one after the other (in the caller's transaction), so
    concurrent guesses cannot all pass the throttle's count before any is recorded."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('login ' || lower($1), 0))", email)


async def record_login_failure(pool: Executor, email: str, client: str) -> datetime:
    """One failure; its time, which `withdraw_login_failure` takes to remove it again."""
    failed_at: datetime = await pool.fetchval(
        "INSERT INTO login_failures (email, client) VALUES (lower($1), $2) RETURNING failed_at", email, client
    )
    return failed_at


async def withdraw_login_failure(pool: Executor, email: str, client: str, failed_at: datetime) -> None:
    """Remove the one failure counted in advance for an attempt that turned out right."""
    await pool.execute(
        "DELETE FROM login_failures WHERE ctid = (SELECT ctid FROM login_failures"
        " WHERE email = lower($1) AND client = $2 AND failed_at = $3 LIMIT 1)",
        email,
        client,
        failed_at,
    )


async def count_login_failures(
    pool: Executor, email: str, client: str, window_seconds: float
) -> tuple[int, int]:
    """Failures in the window: (for this account, from this client address)."""
    row = required(
        await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE email = lower($1)) AS account,"
            " count(*) FILTER (WHERE client = $2) AS client FROM login_failures"
            " WHERE (email = lower($1) OR client = $2)"
            " AND failed_at > now() - make_interval(secs => $3)",
            email,
            client,
            window_seconds,
        )
    )
    return int(row["account"]), int(row["client"])


async def clear_login_failures(pool: asyncpg.Pool, email: str) -> None:
    await pool.execute("DELETE FROM login_failures WHERE email = lower($1)", email)


async def list_memberships(pool: asyncpg.Pool, user_id: UUID) -> list[Membership]:
    """The organizations a user belongs to, by name."""
    rows = await pool.fetch(
        "SELECT o.id AS organization_id, o.name AS organization_name, m.role::text AS role"
        " FROM memberships m JOIN organizations o ON o.id = m.organization_id"
        " WHERE m.user_id = $1 ORDER BY o.name, o.id",
        user_id,
    )
    return [Membership(**r) for r in rows]


async def get_membership(pool: asyncpg.Pool, user_id: UUID, org_id: UUID) -> str | None:
    """The user's role in the organization, or None."""
    role: str | None = await pool.fetchval(
        "SELECT role::text FROM memberships WHERE user_id = $1 AND organization_id = $2", user_id, org_id
    )
    return role


async def set_membership(pool: Executor, org_id: UUID, user_id: UUID, role: str) -> None:
    await pool.execute(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, $3::api_role)"
        " ON CONFLICT (organization_id, user_id) DO UPDATE SET role = EXCLUDED.role",
        org_id,
        user_id,
        role,
    )


async def delete_membership(pool: Executor, org_id: UUID, user_id: UUID) -> bool:
    status = await pool.execute(
        "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2", org_id, user_id
    )
    return bool(status == "DELETE 1")


async def count_admins(pool: asyncpg.Pool, org_id: UUID) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM memberships WHERE organization_id = $1 AND role = 'admin'", org_id
    )
    return count


async def list_members(pool: asyncpg.Pool, org_id: UUID) -> list[Member]:
    rows = await pool.fetch(
        "SELECT u.id AS user_id, u.email, m.role::text AS role, m.created_at"
        " FROM memberships m JOIN users u ON u.id = m.user_id"
        " WHERE m.organization_id = $1 ORDER BY lower(u.email)",
        org_id,
    )
    return [Member(**r) for r in rows]


async def invitation_wait(conn: Executor, org_id: UUID, per_day: int) -> int:
    """0 when the organization may create one more invitation now (fewer than `per_day` in the
    last 24 hours), else the whole seconds until it may. Call in the creating transaction: the
    lock makes concurrent invitations of one organization count one after the other."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('invitations ' || $1::uuid::text, 0))", org_id
    )
    wait = await conn.fetchval(
        """
        WITH recent AS (
            SELECT created_at FROM invitations
             WHERE organization_id = $1 AND created_at > now() - interval '1 day'
             ORDER BY created_at DESC LIMIT $2
        )
        -- Full: the oldest of the newest `per_day` has to leave the window first.
        SELECT CASE WHEN count(*) < $2 THEN 0
                    ELSE GREATEST(1, ceil(extract(epoch FROM
                                                  min(created_at) + interval '1 day' - now())))::int
               END
          FROM recent
        """,
        org_id,
        per_day,
    )
    return int(wait)


async def create_invitation(
    pool: Executor, org_id: UUID, email: str, role: str, token: str, lifetime_seconds: float
) -> Invitation:
    row = await pool.fetchrow(
        "INSERT INTO invitations (organization_id, email, role, token_sha256, expires_at)"
        " VALUES ($1, lower($2), $3::api_role, $4, now() + make_interval(secs => $5))"
        f" RETURNING {_INVITATION}",
        org_id,
        email,
        role,
        digest(token),
        lifetime_seconds,
    )
    return Invitation(**required(row))


async def get_invitation(pool: asyncpg.Pool, token: str) -> Invitation | None:
    """An open invitation (not accepted, not expired) by its token."""
    row = await pool.fetchrow(
        f"SELECT {_INVITATION} FROM invitations"
        " WHERE token_sha256 = $1 AND accepted_at IS NULL AND expires_at > now()",
        digest(token),
    )
    return Invitation(**row) if row else None


async def list_invitations(pool: asyncpg.Pool, org_id: UUID) -> list[Invitation]:
    rows = await pool.fetch(
        f"SELECT {_INVITATION} FROM invitations WHERE organization_id = $1"
        " AND accepted_at IS NULL AND expires_at > now() ORDER BY created_at",
        org_id,
    )
    return [Invitation(**r) for r in rows]


# accept_invitation: spend the invitation and make the membership, once.
_ACCEPT = """
WITH i AS (
    UPDATE invitations SET accepted_at = now()
     WHERE token_sha256 = $1 AND accepted_at IS NULL AND expires_at > now()
    RETURNING organization_id, role
)
INSERT INTO memberships (organization_id, user_id, role)
SELECT organization_id, $2, role FROM i
ON CONFLICT (organization_id, user_id) DO UPDATE SET role = EXCLUDED.role
RETURNING organization_id
"""


async def accept_invitation(pool: Executor, token: str, user_id: UUID) -> UUID | None:
    """The organization joined, or None when the invitation is spent or expired."""
    org_id: UUID | None = await pool.fetchval(_ACCEPT, digest(token), user_id)
    return org_id


async def create_password_reset(pool: Executor, user_id: UUID, token: str, lifetime_seconds: float) -> None:
    await pool.execute(
        "INSERT INTO password_resets (token_sha256, user_id, expires_at)"
        " VALUES ($1, $2, now() + make_interval(secs => $3))",
        digest(token),
        user_id,
        lifetime_seconds,
    )


async def count_recent_resets(pool: asyncpg.Pool, user_id: UUID, window_seconds: float) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM password_resets WHERE user_id = $1"
        " AND created_at > now() - make_interval(secs => $2)",
        user_id,
        window_seconds,
    )
    return count


async def reset_is_open(pool: asyncpg.Pool, token: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM password_resets"
            " WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now())",
            digest(token),
        )
    )


# use_password_reset: spend the token and set the password in one statement; every session
# of the user ends (whoever had the old password is out).
_USE_RESET = """
WITH r AS (
    UPDATE password_resets SET used_at = now()
     WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > now()
    RETURNING user_id
), u AS (
    UPDATE users SET password_hash = $2, updated_at = now() WHERE id IN (SELECT user_id FROM r)
    RETURNING id
), s AS (
    DELETE FROM user_sessions WHERE user_id IN (SELECT id FROM u)
)
SELECT id FROM u
"""


async def use_password_reset(pool: Executor, token: str, password_hash: str) -> UUID | None:
    """The user whose password was set, or None when the link is spent or expired."""
    user_id: UUID | None = await pool.fetchval(_USE_RESET, digest(token), password_hash)
    return user_id
