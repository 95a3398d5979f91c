"""Messages, their recipients and their delivery attempts: storing and reading.

State transitions of the delivery pipeline live in `remails.db.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg

__all__ = ["NewMessage", "count_messages", "get_message_detail", "insert_message"]


@dataclass(frozen=True)
class NewMessage:
    organization_id: UUID
    project_id: UUID
    mail_from: str
    recipients: list[str]
    raw: bytes
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


async def insert_message(pool: asyncpg.Pool, new: NewMessage, lifetime_seconds: float) -> UUID:
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
    """The message (without its bytes), each recipient's state, and the attempts, oldest first."""
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
        " enhanced, text, duration_ms, started_at FROM attempts WHERE message_id = $1"
        " ORDER BY started_at, id",
        message_id,
    )
    detail = dict(row)
    detail["recipients"] = [dict(r) for r in recipients]
    detail["attempts"] = [dict(a) for a in attempts]
    return detail
