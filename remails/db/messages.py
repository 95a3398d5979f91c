"""Messages, their recipients and their delivery attempts: storing and reading.

State transitions of the delivery pipeline live in `remails.db.pipeline`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from remails.db.message_stats import day_status_counts
from remails.db.rows import Executor

__all__ = [
    "MessageFilter",
    "NewMessage",
    "RawMessage",
    "count_messages",
    "get_message_detail",
    "get_message_head",
    "get_message_raw",
    "insert_message",
    "insert_messages",
    "is_data_error",
    "list_messages",
    "recent_problems",
    "release_unblocked",
    "retry_message",
    "statistics",
]


@dataclass(frozen=True)
class NewMessage:
    organization_id: UUID
    project_id: UUID
    mail_from: str
    recipients: list[str]
    raw: bytes | bytearray  # the edge hands over its DATA buffer without a copy
    message_id_header: str
    smtp_credential_id: UUID | None = None
    api_key_id: UUID | None = None
    label: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    id: UUID = field(default_factory=uuid4)


# insert_message: the message and all its recipients in one statement (atomic, one round trip).
_INSERT = """
WITH m AS (
    INSERT INTO messages (id, organization_id, project_id, smtp_credential_id, api_key_id,
                          mail_from, size, raw, message_id_header, label, metadata, expires_at)
    VALUES ($12, $1, $2, $3, $4, $5, octet_length($6::bytea), $6::bytea, $7, $8, $9,
            now() + make_interval(secs => $10))
    RETURNING id
)
INSERT INTO recipients (message_id, address, domain)
SELECT m.id, r.address, lower(split_part(r.address, '@', 2))
  FROM m, unnest($11::text[]) AS r(address)
RETURNING message_id
"""


async def insert_message(pool: Executor, new: NewMessage, lifetime_seconds: float) -> UUID:
    if not new.recipients:
        raise ValueError("a message needs at least one recipient")
    rows = await pool.fetch(
        _INSERT,
        new.organization_id,
        new.project_id,
        new.smtp_credential_id,
        new.api_key_id,
        new.mail_from,
        new.raw,
        new.message_id_header,
        new.label,
        new.metadata,
        lifetime_seconds,
        list(dict.fromkeys(new.recipients)),  # one row per distinct address
        new.id,
    )
    message_id: UUID = rows[0]["message_id"]
    return message_id


# insert_messages: several messages and all their recipients in one statement, so one commit
# (one WAL flush) for what several SMTP sessions finished at once. A message whose SMTP
# credential is gone (revoked during its session) is left out: its id is not returned.
# Recipients go in in the order given (their ids order them in the message's detail).
_INSERT_MANY = """
WITH m AS (
    INSERT INTO messages (id, organization_id, project_id, smtp_credential_id, api_key_id,
                          mail_from, size, raw, message_id_header, label, metadata, expires_at)
    SELECT i.id, i.organization_id, i.project_id, i.smtp_credential_id, i.api_key_id, i.mail_from,
           octet_length(i.raw), i.raw, i.message_id_header, i.label, i.metadata::jsonb,
           now() + make_interval(secs => $11)
      FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[],
                  $7::bytea[], $8::text[], $9::text[], $10::text[])
           AS i(id, organization_id, project_id, smtp_credential_id, api_key_id, mail_from, raw,
                message_id_header, label, metadata)
     WHERE i.smtp_credential_id IS NULL
        OR EXISTS (SELECT 1 FROM smtp_credentials c WHERE c.id = i.smtp_credential_id)
    RETURNING id
), r AS (
    INSERT INTO recipients (message_id, address, domain)
    SELECT r.message_id, r.address, lower(split_part(r.address, '@', 2))
      FROM unnest($12::uuid[], $13::text[]) WITH ORDINALITY AS r(message_id, address, n)
     WHERE r.message_id IN (SELECT id FROM m)
     ORDER BY r.n
)
SELECT id FROM m
"""


# insert_messages of one message (the usual case when the edge is not busy): the shape of
# _INSERT, about half the server's work of the unnest form for a single row.
_INSERT_ONE = """
WITH m AS (
    INSERT INTO messages (id, organization_id, project_id, smtp_credential_id, api_key_id,
                          mail_from, size, raw, message_id_header, label, metadata, expires_at)
    SELECT $12, $1, $2, $3, $4, $5, octet_length($6::bytea), $6::bytea, $7, $8, $9,
           now() + make_interval(secs => $10)
     WHERE $3::uuid IS NULL OR EXISTS (SELECT 1 FROM smtp_credentials c WHERE c.id = $3)
    RETURNING id
)
INSERT INTO recipients (message_id, address, domain)
SELECT m.id, r.address, lower(split_part(r.address, '@', 2))
  FROM m, unnest($11::text[]) AS r(address)
RETURNING message_id
"""


def is_data_error(exc: BaseException) -> bool:
    """Did a statement fail for the data it was given (a constraint, a bad value), rather than
    for the database or the connection? Then the same statement without that data can work."""
    return isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError)


async def insert_messages(pool: Executor, batch: Sequence[NewMessage], lifetime_seconds: float) -> set[UUID]:
    """The ids of the messages stored, in one statement (all of them or, on an error, none)."""
    if not batch or any(not new.recipients for new in batch):
        raise ValueError("a message needs at least one recipient")
    if len(batch) == 1:
        new = batch[0]
        rows = await pool.fetch(
            _INSERT_ONE,
            new.organization_id,
            new.project_id,
            new.smtp_credential_id,
            new.api_key_id,
            new.mail_from,
            new.raw,
            new.message_id_header,
            new.label,
            new.metadata,
            lifetime_seconds,
            list(dict.fromkeys(new.recipients)),
            new.id,
        )
        return {new.id} if rows else set()
    rcpt_ids: list[UUID] = []
    rcpt_addresses: list[str] = []
    for new in batch:
        distinct = list(dict.fromkeys(new.recipients))  # one row per distinct address
        rcpt_ids += [new.id] * len(distinct)
        rcpt_addresses += distinct
    rows = await pool.fetch(
        _INSERT_MANY,
        [new.id for new in batch],
        [new.organization_id for new in batch],
        [new.project_id for new in batch],
        [new.smtp_credential_id for new in batch],
        [new.api_key_id for new in batch],
        [new.mail_from for new in batch],
        [new.raw for new in batch],
        [new.message_id_header for new in batch],
        [new.label for new in batch],
        [json.dumps(new.metadata) for new in batch],
        lifetime_seconds,
        rcpt_ids,
        rcpt_addresses,
    )
    return {row["id"] for row in rows}


async def count_messages(pool: asyncpg.Pool, org_id: UUID | None = None) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE $1::uuid IS NULL OR organization_id = $1", org_id
    )
    return count


_MESSAGE_COLUMNS = """
id, organization_id, project_id, mail_from, size, message_id_header, status, reason,
host(outbound_ip) AS outbound_ip, attempts, next_attempt_at, expires_at, label, metadata,
created_at, updated_at, finished_at
"""


async def get_message_detail(
    pool: asyncpg.Pool, message_id: UUID, org_id: UUID | None = None
) -> dict[str, Any] | None:
    """The message (without its bytes), each recipient's state, and the attempt log, oldest first."""
    row = await pool.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
        " WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2)",
        message_id,
        org_id,
    )
    if row is None:
        return None
    recipients = await pool.fetch(
        "SELECT address, status, last_code, last_enhanced, last_text, attempts, delivered_at"
        " FROM recipients WHERE message_id = $1 ORDER BY id",
        message_id,
    )
    attempts = await pool.fetch(
        "SELECT domain, recipients, mx_host, host(source_ip) AS source_ip, tls_version, code,"
        " enhanced, text, duration_ms, started_at, site, waited FROM attempts WHERE message_id = $1"
        " ORDER BY started_at, id",
        message_id,
    )
    detail = dict(row)
    detail["recipients"] = [dict(r) for r in recipients]
    detail["attempt_log"] = [dict(a) for a in attempts]
    return detail


@dataclass(frozen=True)
class MessageFilter:
    organization_id: UUID | None  # None: every organization's (the operator)
    project_id: UUID | None = None
    status: str | None = None
    label: str | None = None
    recipient: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


_SUMMARY_COLUMNS = """
m.id, m.organization_id, m.project_id, m.mail_from, m.message_id_header, m.status::text, m.reason,
m.label, m.attempts, m.size, m.created_at, m.updated_at, m.finished_at,
ARRAY(SELECT r.address FROM recipients r WHERE r.message_id = m.id ORDER BY r.id) AS recipients
"""

# list_messages: newest first, keyset-paged on (created_at, id).
_LIST = f"""
SELECT {_SUMMARY_COLUMNS}
  FROM messages m
 WHERE ($1::uuid IS NULL OR m.organization_id = $1)
   AND ($2::uuid IS NULL OR m.project_id = $2)
   AND ($3::text IS NULL OR m.status::text = $3)
   AND ($4::text IS NULL OR m.label = $4)
   AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM recipients r
                                     WHERE r.message_id = m.id AND lower(r.address) = lower($5)))
   AND ($6::timestamptz IS NULL OR m.created_at >= $6)
   AND ($7::timestamptz IS NULL OR m.created_at < $7)
   AND ($8::timestamptz IS NULL OR (m.created_at, m.id) < ($8, $9::uuid))
 ORDER BY m.created_at DESC, m.id DESC
 LIMIT $10
"""

# list_messages with a recipient: from that address's few recipient rows to their messages. The
# generic form's `$5 IS NULL OR EXISTS …` cannot become a join, so it walks the whole log.
_LIST_BY_RECIPIENT = f"""
SELECT {_SUMMARY_COLUMNS}
  FROM messages m
 WHERE m.id = ANY (ARRAY(SELECT r.message_id FROM recipients r WHERE lower(r.address) = lower($5)))
   AND ($1::uuid IS NULL OR m.organization_id = $1)
   AND ($2::uuid IS NULL OR m.project_id = $2)
   AND ($3::text IS NULL OR m.status::text = $3)
   AND ($4::text IS NULL OR m.label = $4)
   AND ($6::timestamptz IS NULL OR m.created_at >= $6)
   AND ($7::timestamptz IS NULL OR m.created_at < $7)
   AND ($8::timestamptz IS NULL OR (m.created_at, m.id) < ($8, $9::uuid))
 ORDER BY m.created_at DESC, m.id DESC
 LIMIT $10
"""


async def list_messages(
    pool: asyncpg.Pool, f: MessageFilter, *, before: tuple[datetime, UUID] | None, limit: int
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        _LIST if f.recipient is None else _LIST_BY_RECIPIENT,
        f.organization_id,
        f.project_id,
        f.status,
        f.label,
        f.recipient,
        f.created_after,
        f.created_before,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [dict(r) for r in rows]


# retry_message: give a finished or waiting message another full try. Recipients that were
# not delivered (and are not suppressed) wait again; held messages go back through quota (or,
# held by a lifted block, to where they stopped).
# Nothing moves while the organization is blocked.
_RETRY = """
WITH m AS (
    UPDATE messages
       SET status = CASE WHEN status = 'held' THEN COALESCE(resume_status, 'validated'::message_status)
                         ELSE 'admitted'::message_status END,
           resume_status = NULL,
           reason = 'retry requested', next_attempt_at = NULL, finished_at = NULL,
           expires_at = now() + make_interval(secs => $3), updated_at = now()
     WHERE id = $1 AND organization_id = $2 AND octet_length(raw) > 0  -- not purged by retention
       AND status IN ('deferred', 'bounced', 'failed', 'held') AND organization_may_send(organization_id)
    RETURNING id, organization_id, project_id, status::text
), r AS (
    UPDATE recipients SET status = 'pending', updated_at = now()
     WHERE message_id IN (SELECT id FROM m) AND status IN ('bounced', 'failed', 'deferred')
       AND lower(address) NOT IN (SELECT address FROM suppressions WHERE organization_id = $2)
)
SELECT * FROM m
"""


async def retry_message(
    pool: Executor, message_id: UUID, org_id: UUID, lifetime_seconds: float
) -> dict[str, Any] | None:
    """The message's new state, or None when it is not in a state that can be retried."""
    row = await pool.fetchrow(_RETRY, message_id, org_id, lifetime_seconds)
    return dict(row) if row else None


# release_unblocked: the block on the organization was lifted; its messages held by the block
# resume where they stopped (quota holds wait for the sweep, which checks the quota).
_RELEASE = """
UPDATE messages SET status = resume_status, resume_status = NULL, reason = NULL, updated_at = now()
 WHERE id IN (SELECT id FROM messages
               WHERE organization_id = $1 AND status = 'held' AND resume_status IS NOT NULL
                 AND organization_may_send(organization_id)
               ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id, organization_id, project_id, status::text
"""


async def release_unblocked(pool: asyncpg.Pool, org_id: UUID, limit: int) -> list[dict[str, Any]]:
    """The messages resumed (id, organization_id, project_id, status); the sweep finds the rest."""
    return [dict(r) for r in await pool.fetch(_RELEASE, org_id, limit)]


async def statistics(pool: asyncpg.Pool, org_id: UUID, since: datetime) -> list[dict[str, Any]]:
    """Messages per UTC day and status: the rows still kept (closed days counted once, see
    `message_stats`) plus the daily totals of those the retention purge removed
    (`message_daily_stats`)."""
    totals: dict[tuple[Any, str], int] = {}
    purged = await pool.fetch(
        "SELECT day, status, count FROM message_daily_stats"
        " WHERE organization_id = $1 AND day >= ($2 AT TIME ZONE 'UTC')::date",
        org_id,
        since,
    )
    rows: list[dict[str, Any]] = await day_status_counts(pool, org_id, since)
    for row in rows + [dict(r) for r in purged]:
        key = (row["day"], str(row["status"]))
        totals[key] = totals.get(key, 0) + int(row["count"])
    return [{"day": day, "status": status, "count": count} for (day, status), count in sorted(totals.items())]


async def get_message_head(pool: asyncpg.Pool, message_id: UUID, org_id: UUID, limit: int) -> bytes | None:
    """The first `limit` bytes of the stored message (its headers, for display), or None."""
    head: bytes | None = await pool.fetchval(
        "SELECT substring(raw FROM 1 FOR $3) FROM messages WHERE id = $1 AND organization_id = $2",
        message_id,
        org_id,
        limit,
    )
    return head


@dataclass(frozen=True)
class RawMessage:
    organization_id: UUID
    project_id: UUID
    raw: bytes  # empty once retention removed the bytes
    signed: bool  # a delivered sandbox message: the DKIM-signed bytes; else as received


async def get_message_raw(
    pool: asyncpg.Pool, message_id: UUID, org_id: UUID | None = None
) -> RawMessage | None:
    """The stored bytes of a message (of `org_id`'s, when given)."""
    row = await pool.fetchrow(
        "SELECT m.organization_id, m.project_id, m.raw, (p.sandbox AND m.status = 'delivered') AS signed"
        " FROM messages m JOIN projects p ON p.id = m.project_id"
        " WHERE m.id = $1 AND ($2::uuid IS NULL OR m.organization_id = $2)",
        message_id,
        org_id,
    )
    if row is None:
        return None
    return RawMessage(row["organization_id"], row["project_id"], bytes(row["raw"]), bool(row["signed"]))


async def recent_problems(pool: asyncpg.Pool, limit: int) -> list[dict[str, Any]]:
    """The messages most recently deferred, bounced, failed, held or rejected (any organization)."""
    rows = await pool.fetch(
        "SELECT id, organization_id, status::text, reason, updated_at FROM messages"
        " WHERE status IN ('deferred', 'bounced', 'failed', 'held', 'rejected')"
        " ORDER BY updated_at DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]
