"""Inbound mail (bounces, complaints, DMARC reports), the outcomes it records, the return path.

The inbound MX stores a message before its 250 (`store_inbound`); the inbound function reads
it back, decides, and records the outcome in one statement guarded by the recipient's state
(like the synchronous replies of `remails.db.pipeline`), so a duplicate or replayed report
changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from remails.db.rows import Executor, transaction

__all__ = [
    "BounceTarget",
    "DmarcReportRow",
    "InboundRow",
    "NewInbound",
    "ReportTarget",
    "apply_async_bounce",
    "apply_complaint",
    "bounce_target",
    "finish_inbound",
    "list_dmarc_reports",
    "load_inbound",
    "message_project",
    "note_delay",
    "purge_inbound",
    "recipient_address",
    "record_return_path",
    "report_target",
    "store_dmarc_report",
    "store_inbound",
    "unprocessed_inbound",
]


@dataclass(frozen=True)
class NewInbound:
    kind: str
    rcpt: str
    mail_from: str
    client_ip: str | None
    raw: bytes | bytearray
    organization_id: UUID | None = None
    message_id: UUID | None = None
    recipient_id: int | None = None
    domain_id: UUID | None = None


async def store_inbound(conn: Executor, new: NewInbound) -> UUID:
    inbound_id: UUID = await conn.fetchval(
        "INSERT INTO inbound_messages (kind, rcpt, mail_from, client_ip, organization_id, message_id,"
        " recipient_id, domain_id, size, raw) VALUES ($1, $2, $3, $4::inet, $5, $6, $7, $8, $9, $10)"
        " RETURNING id",
        new.kind,
        new.rcpt,
        new.mail_from,
        new.client_ip or None,
        new.organization_id,
        new.message_id,
        new.recipient_id,
        new.domain_id,
        len(new.raw),
        bytes(new.raw),
    )
    return inbound_id


@dataclass(frozen=True)
class BounceTarget:
    organization_id: UUID
    message_id: UUID
    recipient_id: int
    address: str


# A token is ours only for the domain it was minted under: the recipient exists in that
# message, and rp.<domain> is the return path of a verified domain of the message's organization.
_BOUNCE_TARGET = """
SELECT m.organization_id, m.id AS message_id, r.id AS recipient_id, r.address
  FROM recipients r JOIN messages m ON m.id = r.message_id
 WHERE r.id = $2 AND r.message_id = $1
   AND EXISTS (SELECT 1 FROM domains d WHERE d.organization_id = m.organization_id
                  AND d.verified_at IS NOT NULL AND 'rp.' || d.name = $3)
"""


async def bounce_target(
    conn: Executor, message_id: UUID, recipient_id: int, return_domain: str
) -> BounceTarget | None:
    row = await conn.fetchrow(_BOUNCE_TARGET, message_id, recipient_id, return_domain.lower())
    return BounceTarget(**row) if row else None


@dataclass(frozen=True)
class ReportTarget:
    domain_id: UUID
    organization_id: UUID
    name: str


async def report_target(conn: Executor, domain_id: UUID) -> ReportTarget | None:
    row = await conn.fetchrow(
        "SELECT id AS domain_id, organization_id, name FROM domains WHERE id = $1", domain_id
    )
    return ReportTarget(**row) if row else None


@dataclass(frozen=True)
class InboundRow:
    id: UUID
    kind: str
    rcpt: str
    mail_from: str
    organization_id: UUID | None
    message_id: UUID | None
    recipient_id: int | None
    domain_id: UUID | None
    status: str
    raw: bytes


async def load_inbound(conn: Executor, inbound_id: UUID) -> InboundRow | None:
    row = await conn.fetchrow(
        "SELECT id, kind, rcpt, mail_from, organization_id, message_id, recipient_id, domain_id,"
        " status, raw FROM inbound_messages WHERE id = $1",
        inbound_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["raw"] = bytes(values["raw"])
    return InboundRow(**values)


async def finish_inbound(conn: Executor, inbound_id: UUID, status: str, result: str) -> bool:
    """received → processed | ignored | refused; False when another handler finished it."""
    found = await conn.fetchval(
        "UPDATE inbound_messages SET status = $2, result = $3, processed_at = now()"
        " WHERE id = $1 AND status = 'received' RETURNING id",
        inbound_id,
        status,
        result[:1000],
    )
    return found is not None


async def unprocessed_inbound(
    conn: Executor, older_than_seconds: float, limit: int
) -> list[tuple[UUID, str]]:
    """Stored but not processed for a while (its event was lost): for the sweep to re-emit."""
    rows = await conn.fetch(
        "SELECT id, kind FROM inbound_messages WHERE status = 'received'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [(r["id"], r["kind"]) for r in rows]


async def recipient_address(conn: Executor, recipient_id: int) -> str | None:
    address: str | None = await conn.fetchval("SELECT address FROM recipients WHERE id = $1", recipient_id)
    return address


async def message_project(conn: Executor, message_id: UUID) -> tuple[UUID, str] | None:
    """(project id, status) of a message, for the outcome event."""
    row = await conn.fetchrow("SELECT project_id, status::text FROM messages WHERE id = $1", message_id)
    return (row["project_id"], row["status"]) if row else None


async def purge_inbound(conn: Executor, older_than_days: int, limit: int) -> int:
    """Forget finished inbound mail past the metadata retention (the reports stay)."""
    deleted: int = await conn.fetchval(
        "WITH gone AS (DELETE FROM inbound_messages WHERE id IN ("
        " SELECT id FROM inbound_messages WHERE status <> 'received'"
        " AND created_at < now() - make_interval(days => $1) LIMIT $2) RETURNING 1)"
        " SELECT count(*) FROM gone",
        older_than_days,
        limit,
    )
    return deleted


# -- outcomes ----------------------------------------------------------------------------

# apply_async_bounce: the recipient → bounced (from pending, deferred or delivered: a bounce
# after acceptance), a hard bounce suppressed, a delivered message → bounced, and the
# message.bounced outbox rows, in one statement guarded by the recipient's state.
_BOUNCE = """
WITH r AS (
    UPDATE recipients
       SET status = 'bounced', last_code = $3, last_enhanced = $4, last_text = $5, updated_at = now()
     WHERE id = $2 AND message_id = $1 AND status IN ('pending', 'deferred', 'delivered')
    RETURNING message_id, address
), m AS (
    UPDATE messages
       SET status = CASE WHEN status = 'delivered' THEN 'bounced'::message_status ELSE status END,
           reason = CASE WHEN status = 'delivered' THEN $7 ELSE reason END,
           updated_at = now()
     WHERE id IN (SELECT message_id FROM r)
    RETURNING id, organization_id
), s AS (
    INSERT INTO suppressions (organization_id, address, reason)
    SELECT m.organization_id, lower(r.address), $6 FROM m, r WHERE $6::text IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT enqueue_webhooks(m.id, 'message.bounced') FROM m WHERE (SELECT count(*) FROM r) >= 0
"""

# The outbox rows just written in this transaction (created_at is the transaction's now())
# say which recipient the report is about and that it came after acceptance.
_MARK_ASYNC = """
UPDATE webhook_deliveries
   SET payload = jsonb_set(jsonb_set(payload, '{data,async}', 'true'), '{data,recipient}', to_jsonb($3::text))
 WHERE message_id = $1 AND event_type = $2 AND status = 'pending' AND created_at = now()
"""


async def _outcome_with_note(
    conn: Executor, statement: str, event_type: str, address_of: int, args: Sequence[Any]
) -> int | None:
    async with transaction(conn) as tx:
        queued: int | None = await tx.fetchval(statement, *args)
        if queued is None:
            return None
        if queued:
            address = await tx.fetchval("SELECT address FROM recipients WHERE id = $1", address_of)
            await tx.execute(_MARK_ASYNC, args[0], event_type, address)
        return queued


async def apply_async_bounce(
    conn: Executor,
    message_id: UUID,
    recipient_id: int,
    code: int | None,
    enhanced: str | None,
    text: str,
    suppress_reason: str | None,
) -> int | None:
    """None when the recipient was not there to bounce (unknown, or bounced already: a
    duplicate); else how many webhooks were queued."""
    reason = f"bounced after delivery: {enhanced or code or ''}".strip()
    return await _outcome_with_note(
        conn,
        _BOUNCE,
        "message.bounced",
        recipient_id,
        [message_id, recipient_id, code, enhanced, text[:1000], suppress_reason, reason],
    )


# apply_complaint: a delivered recipient → complained, suppressed (reason `complaint`), with
# the message.complained outbox rows.
_COMPLAINT = """
WITH r AS (
    UPDATE recipients SET status = 'complained', last_text = $3, updated_at = now()
     WHERE id = $2 AND message_id = $1 AND status IN ('delivered', 'pending', 'deferred')
    RETURNING message_id, address
), m AS (
    SELECT id, organization_id FROM messages WHERE id IN (SELECT message_id FROM r)
), s AS (
    INSERT INTO suppressions (organization_id, address, reason)
    SELECT m.organization_id, lower(r.address), 'complaint' FROM m, r
    ON CONFLICT (organization_id, address) DO UPDATE SET reason = 'complaint'
)
SELECT enqueue_webhooks(m.id, 'message.complained') FROM m WHERE (SELECT count(*) FROM r) >= 0
"""


async def apply_complaint(conn: Executor, message_id: UUID, recipient_id: int, text: str) -> int | None:
    return await _outcome_with_note(
        conn, _COMPLAINT, "message.complained", recipient_id, [message_id, recipient_id, text[:1000]]
    )


async def note_delay(conn: Executor, message_id: UUID, recipient_id: int, text: str) -> bool:
    """A 4.x.x `delayed` DSN: the recipient keeps its status, with the note."""
    found = await conn.fetchval(
        "UPDATE recipients SET last_text = $3, updated_at = now()"
        " WHERE id = $2 AND message_id = $1 AND status IN ('pending', 'deferred', 'delivered') RETURNING id",
        message_id,
        recipient_id,
        text[:1000],
    )
    return found is not None


# -- DMARC reports -----------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcReportRow:
    id: UUID
    domain_id: UUID
    org_name: str
    report_id: str
    begin_at: datetime
    end_at: datetime
    policy_domain: str
    records: list[dict[str, Any]]
    created_at: datetime


async def store_dmarc_report(
    conn: Executor,
    target: ReportTarget,
    inbound_id: UUID,
    org_name: str,
    report_id: str,
    begin_at: datetime,
    end_at: datetime,
    policy_domain: str,
    records: list[dict[str, Any]],
) -> bool:
    """False when this reporter's report was stored already (a resend)."""
    found = await conn.fetchval(
        "INSERT INTO dmarc_reports (domain_id, organization_id, inbound_id, org_name, report_id,"
        " begin_at, end_at, policy_domain, records) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)"
        " ON CONFLICT (domain_id, org_name, report_id) DO NOTHING RETURNING id",
        target.domain_id,
        target.organization_id,
        inbound_id,
        org_name,
        report_id,
        begin_at,
        end_at,
        policy_domain,
        json.dumps(records),
    )
    return found is not None


async def list_dmarc_reports(
    conn: Executor, organization_id: UUID, domain_id: UUID, *, limit: int = 100
) -> list[DmarcReportRow]:
    rows = await conn.fetch(
        "SELECT id, domain_id, org_name, report_id, begin_at, end_at, policy_domain, records, created_at"
        " FROM dmarc_reports WHERE organization_id = $1 AND domain_id = $2"
        " ORDER BY begin_at DESC, id LIMIT $3",
        organization_id,
        domain_id,
        limit,
    )
    result = []
    for r in rows:
        values = dict(r)
        records = values["records"]
        values["records"] = json.loads(records) if isinstance(records, str) else records
        result.append(DmarcReportRow(**values))
    return result


# -- the return path ---------------------------------------------------------------------


async def record_return_path(conn: Executor, domain_id: UUID, result: dict[str, Any], ok: bool) -> None:
    await conn.execute(
        "UPDATE domains SET return_path_verification = $2::jsonb,"
        " return_path_verified_at = CASE WHEN $3 THEN COALESCE(return_path_verified_at, now()) END"
        " WHERE id = $1",
        domain_id,
        json.dumps(result),
        ok,
    )
