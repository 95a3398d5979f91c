"""inbound: what came back to the inbound MX — bounces, complaints, DMARC aggregate reports.

inbound.received → message.bounced (`async`) | message.complained | a stored DMARC report
tick → re-emits inbound.received for what was stored but never processed.

The reading is `remails_functions.inbound_parsing` (pure). What a message is about comes from the token of
the address it was sent to (or, for a complaint to the feedback address, the token of the
original's envelope sender) — never from anything else it says. Malformed input is refused
with a log line and kept as it came.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import inbound
from remails.db.inbound import InboundRow
from remails.domain_records import is_same_or_subdomain
from remails.events import EventType, InboundReceived, MessageOutcome, event_data, make_event
from remails.log import log_event
from remails.outcomes import is_hard_bounce
from remails.return_path import KEY_PURPOSE, classify_address
from remails_functions.inbound_parsing import (
    Complaint,
    Failure,
    RefusedReport,
    find_complaint,
    find_failures,
    parse_dmarc,
)

__all__ = ["FILTERS", "TICK_FILTERS", "handle", "handle_tick"]

FILTERS = [{"exact": {"type": EventType.INBOUND_RECEIVED.value}}]
TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]

SWEEP_LIMIT = 200

logger = logging.getLogger("remails.inbound")

T = TypeVar("T")


def _safely(parse: Callable[[bytes], T], raw: bytes) -> T:
    """A parser's answer; whatever hostile input makes it raise is a refusal, never a crash
    (which the sweep would retry for ever)."""
    try:
        return parse(raw)
    except RefusedReport:
        raise
    except Exception as exc:
        raise RefusedReport(f"malformed: {type(exc).__name__}") from None


Decision = tuple[str, str, CloudEvent | None]  # (inbound status, result, outcome event)


def _outcome(
    event_type: EventType, org: UUID, message_id: UUID, project: UUID, status: str, queued: int
) -> CloudEvent:
    data = MessageOutcome(
        message_id=message_id, organization_id=org, project_id=project, status=status, webhooks=queued
    )
    return make_event(event_type, data)


def _pick(failures: list[Failure], address: str) -> Failure | None:
    """The failure about our recipient: the one naming it, else the only one there is."""
    named = [f for f in failures if f.recipient == address.lower()]
    if named:
        return named[0]
    return failures[0] if len(failures) == 1 else None


async def _bounce(ctx: Context, row: InboundRow) -> Decision:
    if row.message_id is None or row.recipient_id is None or row.organization_id is None:
        return "ignored", "the message it is about is gone", None
    address = await inbound.recipient_address(ctx.pool, row.recipient_id)
    complaint = _safely(find_complaint, row.raw)
    if complaint is not None:
        return await _complaint(ctx, row.organization_id, row.message_id, row.recipient_id, complaint)
    failure = _pick(_safely(find_failures, row.raw), str(address or ""))
    if failure is None:
        return "ignored", "no failure for this recipient in the report", None
    if failure.action == "delayed":
        note = f"delayed after acceptance: {failure.enhanced or ''} {failure.text}".strip()
        await inbound.note_delay(ctx.pool, row.message_id, row.recipient_id, note)
        return "processed", "delayed", None
    hard = is_hard_bounce(failure.result)
    reason = (
        f"hard bounce (after acceptance): {failure.enhanced or ''} {failure.text}".strip() if hard else None
    )
    queued = await inbound.apply_async_bounce(
        ctx.pool, row.message_id, row.recipient_id, failure.code, failure.enhanced, failure.text, reason
    )
    if queued is None:
        return "ignored", "the recipient was bounced already or is unknown", None
    found = await inbound.message_project(ctx.pool, row.message_id)
    if found is None:
        return "processed", "bounced", None
    event = _outcome(
        EventType.MESSAGE_BOUNCED, row.organization_id, row.message_id, found[0], found[1], queued
    )
    return "processed", f"bounced {failure.enhanced}" + (" (suppressed)" if hard else ""), event


async def _complaint(
    ctx: Context, org: UUID, message_id: UUID, recipient_id: int, complaint: Complaint
) -> Decision:
    text = (
        f"complaint ({complaint.feedback_type or 'abuse'}) from {complaint.reporter or 'a mailbox provider'}"
    )
    queued = await inbound.apply_complaint(ctx.pool, message_id, recipient_id, text[:500])
    if queued is None:
        return "ignored", "the recipient has complained already or is unknown", None
    found = await inbound.message_project(ctx.pool, message_id)
    if found is None:
        return "processed", "complained", None
    return (
        "processed",
        "complained",
        _outcome(EventType.MESSAGE_COMPLAINED, org, message_id, found[0], found[1], queued),
    )


async def _feedback(ctx: Context, row: InboundRow) -> Decision:
    """A complaint to the feedback address: about the recipient the original's return path names."""
    complaint = _safely(find_complaint, row.raw)
    if complaint is None:
        return "ignored", "not a feedback report", None
    key = ctx.master_key.derive(KEY_PURPOSE)
    settings = ctx.settings
    ours = classify_address(
        key,
        complaint.original_mail_from,
        hostname=settings.hostname,
        reports_domain=settings.effective_reports_domain,
    )
    if ours is None or ours.bounce is None:
        return "ignored", "the complaint names no return path of ours", None
    target = await inbound.bounce_target(
        ctx.pool, ours.bounce.message_id, ours.bounce.recipient_id, ours.domain
    )
    if target is None:
        return "ignored", "the complaint's return path names no message of ours", None
    return await _complaint(ctx, target.organization_id, target.message_id, target.recipient_id, complaint)


async def _report(ctx: Context, row: InboundRow) -> Decision:
    if row.domain_id is None:
        return "ignored", "the domain it is about is gone", None
    target = await inbound.report_target(ctx.pool, row.domain_id)
    if target is None or target.organization_id != row.organization_id:
        return "ignored", "the domain it is about is gone", None
    report = _safely(parse_dmarc, row.raw)
    if not is_same_or_subdomain(report.policy_domain, target.name):
        raise RefusedReport(f"a report about {report.policy_domain}, sent to the address of {target.name}")
    stored = await inbound.store_dmarc_report(
        ctx.pool,
        target,
        row.id,
        report.org_name,
        report.report_id,
        report.begin,
        report.end,
        report.policy_domain,
        report.records,
    )
    return "processed", f"dmarc report {'stored' if stored else 'already stored'}", None


async def _decide(ctx: Context, row: InboundRow) -> Decision:
    try:
        if row.kind == "bounce":
            return await _bounce(ctx, row)
        if row.kind == "feedback":
            return await _feedback(ctx, row)
        if row.kind == "report":
            return await _report(ctx, row)
        return "ignored", "kept for the operator", None
    except RefusedReport as exc:
        return "refused", str(exc), None


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, InboundReceived)
    row = await inbound.load_inbound(ctx.pool, data.inbound_id)
    if row is None or row.status != "received":
        return None  # a duplicate
    status, result, outcome = await _decide(ctx, row)
    if not await inbound.finish_inbound(ctx.pool, row.id, status, result):
        return None
    level = logging.WARNING if status == "refused" else logging.INFO
    log_event(logger, "inbound " + status, level, inbound_id=row.id, kind=row.kind, result=result)
    return outcome


async def handle_tick(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    """Re-emit what was stored but not processed (its event was lost)."""
    stale = await inbound.unprocessed_inbound(ctx.pool, ctx.settings.stuck_after_seconds, SWEEP_LIMIT)
    for inbound_id, kind in stale:
        await ctx.publisher.publish(
            make_event(EventType.INBOUND_RECEIVED, InboundReceived(inbound_id=inbound_id, kind=kind))
        )
    purged = await inbound.purge_inbound(ctx.pool, ctx.settings.metadata_retention_days, SWEEP_LIMIT)
    if stale or purged:
        log_event(logger, "inbound sweep", moved=len(stale), purged=purged)
    return None
