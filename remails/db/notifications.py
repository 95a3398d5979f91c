"""Notifications: what an organization must be told about, and their mail outbox.

A notification row is written by the statement that causes it — the quota count
(`pipeline.admit`), a disabled webhook endpoint (`webhook_deliveries.finish_delivery`), a
domain's re-check (`record_recheck`, here) — so a change and its notice commit together, and
a once-key or a status guard makes one change one notification. Each starts `pending`; the
notify function mails it from the system project (`sent`) or decides it cannot (`not_sent`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from remails.db.rows import Executor

__all__ = [
    "DomainToCheck",
    "ToMail",
    "claim_to_mail",
    "due_rechecks",
    "list_notifications",
    "mark_mailed",
    "record_recheck",
]

NOTIFICATION_KINDS = (
    "quota.warning",
    "quota.exhausted",
    "domain.invalid",
    "domain.valid",
    "webhook.disabled",
)


async def list_notifications(pool: Executor, org_id: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, kind, message AS subject, message, details, subject_id, created_at, mail_status"
        " FROM notifications WHERE organization_id = $1 ORDER BY created_at DESC, id LIMIT $2",
        org_id,
        limit,
    )
    return [dict(r) for r in rows]


# -- the mail outbox ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToMail:
    id: UUID
    organization_id: UUID
    organization_name: str
    kind: str
    subject: str
    details: dict[str, Any]
    created_at: datetime
    recipients: list[str]  # notification_email, then the admins' addresses


# claim_to_mail: the oldest pending notifications with their recipients, locked for the
# caller's transaction (another notify skips them).
_CLAIM = """
SELECT n.id, n.organization_id, o.name AS organization_name, n.kind, n.message AS subject, n.details,
       n.created_at,
       ARRAY(SELECT DISTINCT lower(x.email) FROM (
                 SELECT o.notification_email AS email WHERE o.notification_email IS NOT NULL
                 UNION ALL
                 SELECT u.email FROM memberships ms JOIN users u ON u.id = ms.user_id
                  WHERE ms.organization_id = n.organization_id AND ms.role = 'admin') x) AS recipients
  FROM notifications n JOIN organizations o ON o.id = n.organization_id
 WHERE n.mail_status = 'pending'
 ORDER BY n.created_at LIMIT $1
   FOR UPDATE OF n SKIP LOCKED
"""


async def claim_to_mail(conn: Executor, limit: int) -> list[ToMail]:
    rows = await conn.fetch(_CLAIM, limit)
    return [
        ToMail(
            r["id"],
            r["organization_id"],
            r["organization_name"],
            r["kind"],
            r["subject"],
            r["details"],
            r["created_at"],
            sorted(r["recipients"]),
        )
        for r in rows
    ]


async def mark_mailed(conn: Executor, notification_id: UUID, message_id: UUID | None) -> bool:
    """pending → sent (with the message that carries it) or, without one, not_sent."""
    done = await conn.fetchval(
        "UPDATE notifications SET mail_status = CASE WHEN $2::uuid IS NULL THEN 'not_sent' ELSE 'sent' END,"
        " mail_message_id = $2, mailed_at = now() WHERE id = $1 AND mail_status = 'pending' RETURNING id",
        notification_id,
        message_id,
    )
    return done is not None


# -- the DNS re-check of verified domains ----------------------------------------------------------


@dataclass(frozen=True)
class DomainToCheck:
    id: UUID
    organization_id: UUID
    name: str
    dkim_selector: str
    dkim_public_key: str
    status: str
    return_path: bool = False  # its return path (rp.<domain>) verified: re-checked too


# due_rechecks: verified domains not checked for `every` seconds, oldest first; taking one
# stamps last_checked_at, so a concurrent tick does not check it too.
_DUE = """
UPDATE domains SET last_checked_at = now()
 WHERE id IN (SELECT id FROM domains
               WHERE verified_at IS NOT NULL
                 AND (last_checked_at IS NULL OR last_checked_at < now() - make_interval(secs => $1))
               ORDER BY last_checked_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id, organization_id, name, dkim_selector, dkim_public_key, status,
          return_path_verified_at IS NOT NULL AS return_path
"""


async def due_rechecks(conn: Executor, every_seconds: float, limit: int) -> list[DomainToCheck]:
    return [DomainToCheck(**r) for r in await conn.fetch(_DUE, every_seconds, limit)]


# record_recheck: the check's result, and — only when the status changes (verified ↔ invalid)
# — the domain.invalid or domain.valid notification, in the same statement.
_RECHECK = """
WITH before AS (
    SELECT id, status FROM domains WHERE id = $1 AND verified_at IS NOT NULL FOR UPDATE
), d AS (
    UPDATE domains SET status = $2, verification = $3
      FROM before WHERE domains.id = before.id
    RETURNING domains.id, domains.organization_id, domains.name, before.status AS was
), n AS (
    INSERT INTO notifications (organization_id, kind, message, subject_id, details)
    SELECT d.organization_id, CASE WHEN $2 = 'invalid' THEN 'domain.invalid' ELSE 'domain.valid' END,
           CASE WHEN $2 = 'invalid'
                THEN 'The DNS records of ' || d.name || ' no longer match'
                ELSE 'The DNS records of ' || d.name || ' match again' END,
           d.id, jsonb_build_object('domain', d.name, 'checks', $3::jsonb -> 'checks')
      FROM d WHERE d.was <> $2 AND d.was <> 'pending'
    RETURNING kind
)
SELECT kind FROM n
"""


async def record_recheck(conn: Executor, domain_id: UUID, ok: bool, result: dict[str, Any]) -> str | None:
    """Store a re-check; the kind of notification it caused (None: the status did not change)."""
    kind: str | None = await conn.fetchval(_RECHECK, domain_id, "verified" if ok else "invalid", result)
    return kind
