"""Message state transitions of the delivery pipeline: each a guarded statement naming the state
it expects. Zero rows is a normal answer — another handler or a duplicate event moved the
message first — and callers then do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from remails.db.rows import Executor

__all__ = [
    "AttemptRecord",
    "Claimed",
    "MessageKey",
    "MessageRow",
    "RecipientRow",
    "admit",
    "advance",
    "apply_outcome",
    "apply_validation",
    "claim_for_sending",
    "load_message",
    "load_raw",
    "load_recipients",
    "record_attempts",
    "release_node_leases",
    "set_route",
    "suppressed_among",
]


@dataclass(frozen=True)
class MessageRow:
    id: UUID
    organization_id: UUID
    project_id: UUID
    status: str
    mail_from: str
    message_id_header: str
    outbound_ip: str | None
    attempts: int
    expires_at: datetime
    reason: str | None


@dataclass(frozen=True)
class RecipientRow:
    id: int
    address: str
    domain: str
    status: str
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None


_MESSAGE = """
SELECT id, organization_id, project_id, status::text, mail_from, message_id_header,
       host(outbound_ip) AS outbound_ip, attempts, expires_at, reason
  FROM messages WHERE id = $1
"""


async def load_message(conn: Executor, message_id: UUID, *, lock: bool = False) -> MessageRow | None:
    row = await conn.fetchrow(_MESSAGE + (" FOR UPDATE" if lock else ""), message_id)
    return MessageRow(**row) if row else None


async def load_raw(conn: Executor, message_id: UUID) -> bytes | None:
    raw: bytes | None = await conn.fetchval("SELECT raw FROM messages WHERE id = $1", message_id)
    return raw


async def load_recipients(
    conn: Executor, message_id: UUID, statuses: Sequence[str] | None = None
) -> list[RecipientRow]:
    rows = await conn.fetch(
        "SELECT id, address, domain, status::text, last_code, last_enhanced, last_text"
        " FROM recipients WHERE message_id = $1"
        " AND ($2::text[] IS NULL OR status::text = ANY($2::text[])) ORDER BY id",
        message_id,
        list(statuses) if statuses is not None else None,
    )
    return [RecipientRow(**r) for r in rows]


# advance: expected → new, only if the message is still in one of the expected states.
_ADVANCE = """
UPDATE messages
   SET status = $3::message_status, reason = COALESCE($4, reason), updated_at = now(),
       finished_at = CASE WHEN $3::text IN ('delivered', 'bounced', 'failed', 'rejected') THEN now() END
 WHERE id = $1 AND status = ANY($2::message_status[])
RETURNING id
"""


async def advance(
    conn: Executor, message_id: UUID, expected: Sequence[str], new: str, reason: str | None = None
) -> bool:
    return await conn.fetchval(_ADVANCE, message_id, list(expected), new, reason) is not None


async def suppressed_among(conn: Executor, org_id: UUID, addresses: Sequence[str]) -> set[str]:
    """Which of `addresses` (case-insensitive) are on the organization's suppression list."""
    rows = await conn.fetch(
        "SELECT address FROM suppressions WHERE organization_id = $1 AND address = ANY($2::text[])",
        org_id,
        [a.lower() for a in addresses],
    )
    return {r["address"] for r in rows}


async def apply_validation(
    pool: asyncpg.Pool, message_id: UUID, suppressed: Sequence[str], reject_reason: str | None
) -> bool:
    """received → validated or → rejected, suppressed recipients marked, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        new_status = "validated" if reject_reason is None else "rejected"
        if not await advance(conn, message_id, ["received"], new_status, reject_reason):
            return False
        if suppressed:
            await conn.execute(
                "UPDATE recipients SET status = 'suppressed', updated_at = now(),"
                " last_text = 'address is on the suppression list'"
                " WHERE message_id = $1 AND lower(address) = ANY($2::text[])",
                message_id,
                [a.lower() for a in suppressed],
            )
        return True


# admit: count the message against its organization's monthly quota, atomically.
# The message row is locked first, so a duplicate event waits and then finds it moved.
_LOCK_VALIDATED = "SELECT organization_id FROM messages WHERE id = $1 AND status = 'validated' FOR UPDATE"
_COUNT_QUOTA = """
UPDATE organizations
   SET quota_used = CASE WHEN quota_period_start < date_trunc('month', now())::date
                         THEN 1 ELSE quota_used + 1 END,
       quota_period_start = date_trunc('month', now())::date,
       updated_at = now()
 WHERE id = $1
   AND (quota_period_start < date_trunc('month', now())::date OR quota_used < monthly_quota)
RETURNING monthly_quota
"""


async def admit(pool: asyncpg.Pool, message_id: UUID) -> str | None:
    """validated → admitted when quota is left, else → held. None: not in `validated`."""
    async with pool.acquire() as conn, conn.transaction():
        org_id = await conn.fetchval(_LOCK_VALIDATED, message_id)
        if org_id is None:
            return None
        if await conn.fetchval(_COUNT_QUOTA, org_id) is not None:
            await advance(conn, message_id, ["validated"], "admitted")
            return "admitted"
        await advance(conn, message_id, ["validated"], "held", "monthly quota used up")
        return "held"


async def set_route(conn: Executor, message_id: UUID, outbound_ip: str) -> bool:
    """admitted → routed, with the chosen egress source."""
    result = await conn.fetchval(
        "UPDATE messages SET status = 'routed', outbound_ip = $2::inet, reason = NULL, updated_at = now()"
        " WHERE id = $1 AND status = 'admitted' RETURNING id",
        message_id,
        outbound_ip,
    )
    return result is not None


@dataclass(frozen=True)
class Claimed:
    message: MessageRow
    raw: bytes
    recipients: list[RecipientRow]


# claim_for_sending: routed → sending for this node and IP, with a lease; counts the attempt.
_CLAIM = """
UPDATE messages
   SET status = 'sending', lease_owner = $3, lease_until = now() + make_interval(secs => $4),
       attempts = attempts + 1, updated_at = now()
 WHERE id = $1 AND status = 'routed' AND outbound_ip = $2::inet
RETURNING id
"""


async def claim_for_sending(
    pool: asyncpg.Pool, message_id: UUID, outbound_ip: str, node: str, lease_seconds: float
) -> Claimed | None:
    async with pool.acquire() as conn:
        if await conn.fetchval(_CLAIM, message_id, outbound_ip, node, lease_seconds) is None:
            return None
        message = await load_message(conn, message_id)
        raw = await load_raw(conn, message_id)
        recipients = await load_recipients(conn, message_id, ["pending", "deferred"])
    assert message is not None and raw is not None
    return Claimed(message, raw, recipients)


@dataclass(frozen=True)
class AttemptRecord:
    """One SMTP transaction (or failed try) for one destination domain."""

    domain: str
    recipients: list[str]
    mx_host: str | None
    source_ip: str
    tls_version: str | None
    code: int | None
    enhanced: str | None
    text: str
    duration_ms: int
    replies: dict[str, tuple[int | None, str | None, str]]  # address → (code, enhanced, text)


async def record_attempts(
    pool: asyncpg.Pool, message_id: UUID, node: str, attempts: Sequence[AttemptRecord]
) -> bool:
    """sending → attempted with every reply stored, only for the node holding the lease."""
    replies: list[tuple[Any, ...]] = [
        (message_id, address, code, enhanced, text)
        for a in attempts
        for address, (code, enhanced, text) in a.replies.items()
    ]
    async with pool.acquire() as conn, conn.transaction():
        moved = await conn.fetchval(
            "UPDATE messages SET status = 'attempted', lease_owner = NULL, lease_until = NULL,"
            " updated_at = now() WHERE id = $1 AND status = 'sending' AND lease_owner = $2 RETURNING id",
            message_id,
            node,
        )
        if moved is None:
            return False
        await conn.executemany(
            "UPDATE recipients SET last_code = $3, last_enhanced = $4, last_text = $5,"
            " attempts = attempts + 1, updated_at = now() WHERE message_id = $1 AND address = $2",
            replies,
        )
        await conn.executemany(
            "INSERT INTO attempts (message_id, domain, recipients, mx_host, source_ip, tls_version, code,"
            " enhanced, text, duration_ms) VALUES ($1, $2, $3, $4, $5::inet, $6, $7, $8, $9, $10)",
            [
                (
                    message_id,
                    a.domain,
                    a.recipients,
                    a.mx_host,
                    a.source_ip,
                    a.tls_version,
                    a.code,
                    a.enhanced,
                    a.text,
                    a.duration_ms,
                )
                for a in attempts
            ],
        )
        return True


@dataclass(frozen=True)
class MessageKey:
    id: UUID
    organization_id: UUID
    project_id: UUID


async def release_node_leases(pool: asyncpg.Pool, node: str) -> list[MessageKey]:
    """A node that (re)starts holds no sends: its leased messages go back to routing."""
    rows = await pool.fetch(
        "UPDATE messages SET status = 'admitted', lease_owner = NULL, lease_until = NULL, updated_at = now()"
        " WHERE status = 'sending' AND lease_owner = $1 RETURNING id, organization_id, project_id",
        node,
    )
    return [MessageKey(**r) for r in rows]


async def apply_outcome(
    conn: Executor,
    message: MessageRow,
    recipient_statuses: dict[int, str],
    suppress: Sequence[tuple[str, str]],
    status: str,
    reason: str | None,
    next_attempt: datetime | None,
) -> bool:
    """attempted → the decided status, with each recipient's new status and hard bounces
    suppressed. Call inside a transaction that loaded `message` with lock=True."""
    moved = await conn.fetchval(
        "UPDATE messages SET status = $2::message_status, reason = $3, next_attempt_at = $4,"
        " updated_at = now(), finished_at = CASE WHEN $2::text IN ('delivered', 'bounced', 'failed')"
        " THEN now() END"
        " WHERE id = $1 AND status = 'attempted' RETURNING id",
        message.id,
        status,
        reason,
        next_attempt,
    )
    if moved is None:
        return False
    await conn.executemany(
        "UPDATE recipients SET status = $2::recipient_status, updated_at = now(),"
        " delivered_at = CASE WHEN $2::text = 'delivered' THEN now() ELSE delivered_at END WHERE id = $1",
        list(recipient_statuses.items()),
    )
    if suppress:
        await conn.executemany(
            "INSERT INTO suppressions (organization_id, address, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            [(message.organization_id, address.lower(), why) for address, why in suppress],
        )
    return True
