"""The audit log: who changed what, appended inside the transaction of the change itself.

The table is append-only — the database refuses UPDATE, DELETE and TRUNCATE on it, except the
retention purge (`remails.db.retention.purge_audit_log`). Details never hold a secret.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from remails.db.rows import Executor

__all__ = [
    "Actor",
    "AuditEntry",
    "AuditPage",
    "list_entries",
    "operator_cli",
    "record",
    "record_for_user",
    "url_origin",
]

ActorKind = Literal["api_key", "user", "operator"]


@dataclass(frozen=True)
class Actor:
    """Who acts: an organization's API key, a dashboard user, or the operator (its admin key
    through the API, or the CLI with no id)."""

    kind: ActorKind
    id: str | None = None
    client_ip: str | None = None


def url_origin(url: str) -> str:
    """A URL as the audit log keeps it: scheme and host only — paths and queries of webhook
    URLs often carry tokens, and credentials in the authority never belong in a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def operator_cli() -> Actor:
    return Actor("operator", "cli")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    organization_id: UUID | None
    at: datetime
    actor: dict[str, str | None]
    client_ip: str | None
    action: str
    target: str | None
    details: dict[str, Any] = field(default_factory=dict)


_RECORD = """
INSERT INTO audit_log (organization_id, actor_kind, actor_id, client_ip, action, target, details)
VALUES ($1, $2, $3, $4::inet, $5, $6, $7)
"""


async def record(
    conn: Executor,
    actor: Actor,
    action: str,
    *,
    organization_id: UUID | None,
    target: UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry; call it on the connection (and in the transaction) of the change."""
    await conn.execute(
        _RECORD,
        organization_id,
        actor.kind,
        actor.id,
        actor.client_ip,
        action,
        None if target is None else str(target),
        json.loads(json.dumps(details or {}, default=str)),
    )


# record_for_user: one entry in each organization the user belongs to (each organization's
# admins see what concerns their member), or one with no organization for a user in none.
_RECORD_FOR_USER = """
WITH orgs AS (
    SELECT organization_id FROM memberships WHERE user_id = $1
    UNION ALL
    SELECT NULL::uuid WHERE NOT EXISTS (SELECT 1 FROM memberships WHERE user_id = $1)
)
INSERT INTO audit_log (organization_id, actor_kind, actor_id, client_ip, action, target, details)
SELECT organization_id, $2, $3, $4::inet, $5, $6, $7 FROM orgs
"""


async def record_for_user(
    conn: Executor,
    actor: Actor,
    action: str,
    user_id: UUID,
    *,
    target: UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append an entry about a user's own account (sign-in, password, two-factor) to the log
    of every organization they belong to; call it in the transaction of the change."""
    await conn.execute(
        _RECORD_FOR_USER,
        user_id,
        actor.kind,
        actor.id,
        actor.client_ip,
        action,
        None if target is None else str(target),
        json.loads(json.dumps(details or {}, default=str)),
    )


async def recent_user_entry(conn: Executor, user_id: UUID, action: str, within_seconds: float) -> bool:
    """Whether the user's account has an entry for `action` from the last `within_seconds`."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM audit_log WHERE actor_kind = 'user' AND actor_id = $1"
        " AND action = $2 AND at > now() - make_interval(secs => $3))",
        str(user_id),
        action,
        within_seconds,
    )
    return bool(found)


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_cursor: str | None


_MAX_ID = 2**63 - 1


def _cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(str(entry_id).encode()).decode().rstrip("=")


def parse_cursor(cursor: str) -> int:
    """The id a cursor stands for; ValueError when it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    entry_id = int(base64.urlsafe_b64decode(padded.encode()).decode())
    if not 0 < entry_id <= _MAX_ID:  # ids are positive bigints; beyond, the driver would fail
        raise ValueError("not an audit entry id")
    return entry_id


# list_entries: one organization's entries (or those of none), newest first, after the
# cursor (an id: entries are numbered in commit-ish order), optionally one action (or action
# prefix `domain.`) and one actor. Two texts, so that each reads the index on its own terms.
_LIST = """
SELECT id, organization_id, at, actor_kind, actor_id, host(client_ip) AS client_ip, action, target, details
  FROM audit_log
 WHERE {scope} AND ($2::bigint IS NULL OR id < $2)
   AND ($3::text IS NULL OR action = $3 OR (right($3, 1) = '.' AND starts_with(action, $3)))
   AND ($4::text IS NULL OR actor_kind = $4) AND ($5::text IS NULL OR actor_id = $5)
 ORDER BY id DESC LIMIT $6
"""
_LIST_ORG = _LIST.format(scope="organization_id = $1")
_LIST_NO_ORG = _LIST.format(scope="organization_id IS NULL AND $1::uuid IS NULL")


async def list_entries(
    conn: Executor,
    organization_id: UUID | None,
    *,
    limit: int,
    cursor: str | None = None,
    action: str | None = None,
    actor_kind: str | None = None,
    actor_id: str | None = None,
) -> AuditPage:
    """`organization_id` None: the entries of no organization — the operator's own changes
    (IP pools, the admin token, users of no organization) and sign-ins for no account."""
    before = parse_cursor(cursor) if cursor else None
    query = _LIST_NO_ORG if organization_id is None else _LIST_ORG
    rows = await conn.fetch(query, organization_id, before, action, actor_kind, actor_id, limit + 1)
    entries = [
        AuditEntry(
            r["id"],
            r["organization_id"],
            r["at"],
            {"kind": r["actor_kind"], "id": r["actor_id"]},
            r["client_ip"],
            r["action"],
            r["target"],
            r["details"],
        )
        for r in rows[:limit]
    ]
    next_cursor = _cursor(entries[-1].id) if len(rows) > limit else None
    return AuditPage(entries, next_cursor)
