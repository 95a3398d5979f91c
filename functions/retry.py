"""retry: decide each recipient's fate after an attempt, and sweep for due or stuck messages.

delivery.attempted → message.delivered | message.deferred | message.bounced | message.failed
tick → re-emits whatever is due (deferred), expired (failed) or stuck in any state.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

from cloudevents.http import CloudEvent

from remails import metrics
from remails.context import Context
from remails.db import pipeline, retention, sweep
from remails.dkim_rotation import sweep_rotations
from remails.dns import make_resolver
from remails.events import (
    DeliveryAttempted,
    EventType,
    MessageEvent,
    MessageOutcome,
    MessageRouted,
    event_data,
    make_event,
)
from remails.log import log_event
from remails.outcomes import (
    RecipientResult,
    RetryPolicy,
    classify,
    is_hard_bounce,
    message_outcome,
    next_attempt_at,
)

__all__ = ["ATTEMPT_FILTERS", "TICK_FILTERS", "handle_attempted", "handle_tick"]

ATTEMPT_FILTERS = [{"exact": {"type": EventType.DELIVERY_ATTEMPTED.value}}]
TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]

SWEEP_LIMIT = 500

logger = logging.getLogger("remails.retry")

_OUTCOME_EVENTS = {
    "delivered": EventType.MESSAGE_DELIVERED,
    "deferred": EventType.MESSAGE_DEFERRED,
    "bounced": EventType.MESSAGE_BOUNCED,
    "failed": EventType.MESSAGE_FAILED,
}


def _reply_text(result: RecipientResult) -> str:
    parts = [str(result.code) if result.code else "", result.enhanced or "", result.text]
    return " ".join(p for p in parts if p)


async def handle_attempted(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, DeliveryAttempted)
    message = await pipeline.load_attempted(ctx.pipeline, data.message_id)
    if message is None or message.status != "attempted":
        return None
    policy = RetryPolicy(ctx.settings.retry_first_seconds, ctx.settings.retry_max_seconds)
    retry_at = next_attempt_at(
        message.attempts, datetime.now(UTC), message.expires_at, policy, random.uniform(-1, 1)
    )
    statuses: dict[int, str] = {}
    suppress: list[tuple[str, str]] = []
    for r in message.recipients:
        if r.status not in ("pending", "deferred"):
            continue
        result = RecipientResult(r.last_code, r.last_enhanced, r.last_text or "")
        disposition: str = classify(result)
        if disposition == "deferred" and retry_at is None:
            disposition = "failed"  # the next try would be past the message lifetime
        statuses[r.id] = disposition
        if is_hard_bounce(result):
            suppress.append((r.address, "hard bounce: " + _reply_text(result)))
    final = message_outcome([statuses.get(r.id, r.status) for r in message.recipients])
    counts = {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}
    reason = ", ".join(f"{n} {s}" for s, n in counts.items()) or None
    next_attempt = retry_at if final == "deferred" else None
    queued = await pipeline.apply_outcome(
        ctx.pipeline, message.key.id, statuses, suppress, final, reason, next_attempt
    )
    if queued is None:
        return None  # another decision won: this event was a duplicate
    metrics.finished(final, message.created_at)
    log_event(
        logger,
        "attempt decided",
        message_id=message.key.id,
        status=final,
        attempts=message.attempts,
        **counts,
    )
    key = message.key
    outcome = MessageOutcome(
        message_id=key.id,
        organization_id=key.organization_id,
        project_id=key.project_id,
        status=final,
        reason=reason,
        webhooks=queued,
    )
    return make_event(_OUTCOME_EVENTS[final], outcome)


def _event_for(swept: sweep.Swept) -> CloudEvent | None:
    base = MessageEvent(
        message_id=swept.id, organization_id=swept.organization_id, project_id=swept.project_id
    )
    if swept.status == "received":
        return make_event(EventType.MESSAGE_RECEIVED, base)
    if swept.status == "validated":
        return make_event(EventType.MESSAGE_VALIDATED, base)
    if swept.status == "admitted":
        return make_event(EventType.MESSAGE_ADMITTED, base)
    if swept.status == "attempted":
        return make_event(EventType.DELIVERY_ATTEMPTED, DeliveryAttempted(**base.model_dump()))
    if swept.status == "routed" and swept.outbound_ip:
        return make_event(
            EventType.MESSAGE_ROUTED,
            MessageRouted(**base.model_dump(), outbound_ip=swept.outbound_ip),
        )
    if swept.status == "failed":
        return make_event(
            EventType.MESSAGE_FAILED,
            MessageOutcome(
                **base.model_dump(),
                status="failed",
                reason="not delivered within the message lifetime",
            ),
        )
    return None


async def handle_tick(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    """The sweep. Publishes directly: one tick can move many messages."""
    swept = [
        *await sweep.expire_overdue(ctx.pipeline, SWEEP_LIMIT),
        *await sweep.due_deferred(ctx.pipeline, SWEEP_LIMIT),
        *await sweep.restart_stuck(ctx.pipeline, ctx.settings.stuck_after_seconds, SWEEP_LIMIT),
        *await sweep.requeue_held(ctx.pipeline, SWEEP_LIMIT),
    ]
    for item in swept:
        metrics.finished(item.status)  # counts only the final ones: the sweep's expiries
        follow_up = _event_for(item)
        if follow_up is not None:
            await ctx.publisher.publish(follow_up)
    await _rotate_dkim_keys(ctx)
    kept = retention.Retention(ctx.settings.metadata_retention_days, ctx.settings.audit_retention_days)
    purged = await retention.purge_expired(ctx.pipeline, kept, SWEEP_LIMIT)
    if swept or purged:
        log_event(logger, "sweep", moved=len(swept), **{f"{k}_purged": n for k, n in vars(purged).items()})
    return None


async def _rotate_dkim_keys(ctx: Context) -> None:
    """DKIM rotations move on with the sweep; a failure here must not stop the rest of it."""
    settings = ctx.settings
    try:
        done = await sweep_rotations(
            ctx.pool,
            ctx.master_key,
            make_resolver(settings),
            rotation_days=settings.dkim_rotation_days,
            grace_days=settings.dkim_rotation_grace_days,
        )
    except Exception as exc:
        log_event(logger, "dkim rotation sweep failed", logging.WARNING, error=type(exc).__name__)
        return
    if done.started or done.promoted or done.retired:
        log_event(logger, "dkim rotation", **vars(done))
