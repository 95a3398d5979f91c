"""retry: decide each recipient's fate after an attempt, and sweep for due or stuck messages.

delivery.attempted → message.delivered | message.deferred | message.bounced | message.failed
tick → re-emits whatever is due (deferred), expired (failed) or stuck in any state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cloudevents.http import CloudEvent

from remails import metrics
from remails.attempt_decision import apply_decisions
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
from remails.outcomes import RetryPolicy

__all__ = [
    "ATTEMPT_FILTERS",
    "TICK_FILTERS",
    "handle_attempted",
    "handle_attempted_batch",
    "handle_tick",
]

ATTEMPT_FILTERS = [{"exact": {"type": EventType.DELIVERY_ATTEMPTED.value}}]
TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]

SWEEP_LIMIT = 500

logger = logging.getLogger("remails.retry")


async def handle_attempted_batch(ctx: Context, events: Sequence[CloudEvent]) -> list[CloudEvent]:
    """The attempted messages of `events` decided, loaded with one query and moved with one
    statement; a message no longer `attempted` (a duplicate event) is left alone."""
    ids = list({event_data(e, DeliveryAttempted).message_id: None for e in events})
    messages = await pipeline.load_attempted_many(ctx.pipeline, ids)
    policy = RetryPolicy(ctx.settings.retry_first_seconds, ctx.settings.retry_max_seconds)
    return await apply_decisions(ctx.pipeline, messages, policy)


async def handle_attempted(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    """One event: a batch of one."""
    replies = await handle_attempted_batch(ctx, [event])
    return replies[0] if replies else None


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
