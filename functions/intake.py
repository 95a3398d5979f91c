"""intake: validate, quota and route as one step, for a process that hosts all three.

message.received → message.routed | message.rejected | message.held (or admitted, without an
event, when no egress source is live: the sweep routes it later)

The decisions are validate's and route's own (`validate.decide`, `route.choose_egress`) and
the statement keeps every guard of the three steps; what goes is two event hand-offs and four
statements per message. A batch of events is loaded in one query and moved in one statement.
Over Knative each step stays its own function.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cloudevents.http import CloudEvent

from remails import metrics
from remails.context import Context
from remails.db import pipeline
from remails.events import EventType, MessageEvent, MessageOutcome, MessageRouted, event_data, make_event
from remails.log import log_event
from remails.message_headers import header_block
from remails_functions.moderation import held_if_blocked
from remails_functions.route import HEARTBEATS_TO_BE_LIVE, choose_egress
from remails_functions.validate import FILTERS as VALIDATE_FILTERS
from remails_functions.validate import decide

__all__ = ["FILTERS", "decide_intake", "handle", "handle_batch"]

FILTERS = VALIDATE_FILTERS

logger = logging.getLogger("remails.intake")


def decide_intake(message: pipeline.ToIntake) -> pipeline.IntakeDecision:
    """validate's decision, then route's choice of egress source (none for a rejected one)."""
    v = message.validate
    decision = decide(header_block(v.head), v.mail_from, v.verified_domains, v.recipients, v.suppressed)
    ip = None
    if decision.reject_reason is None:
        ip = choose_egress(message.live_ips, v.key.id, message.attempts)
    return pipeline.IntakeDecision(v.key.id, decision.reject_reason, decision.suppressed, ip)


def _reply(
    data: MessageEvent, result: pipeline.IntakeResult, decision: pipeline.IntakeDecision
) -> CloudEvent | None:
    if result.status == "routed" and decision.outbound_ip is not None:
        return make_event(
            EventType.MESSAGE_ROUTED, MessageRouted(**data.model_dump(), outbound_ip=decision.outbound_ip)
        )
    if result.status == "rejected":
        metrics.finished("rejected")
        outcome = MessageOutcome(
            **data.model_dump(), status="rejected", reason=decision.reject_reason, webhooks=result.webhooks
        )
        return make_event(EventType.MESSAGE_REJECTED, outcome)
    if result.status == "held":
        outcome = MessageOutcome(
            **data.model_dump(), status="held", reason="monthly quota used up", webhooks=result.webhooks
        )
        return make_event(EventType.MESSAGE_HELD, outcome)
    # Stays admitted; the sweep routes it again once a sender node is back.
    log_event(logger, "no live egress source", logging.WARNING, message_id=data.message_id)
    return None


async def handle_batch(ctx: Context, events: Sequence[CloudEvent]) -> list[CloudEvent]:
    """Every received message of `events` moved with one query and one statement; the replies
    are the events the three steps would have ended with."""
    data = {d.message_id: d for d in (event_data(e, MessageEvent) for e in events)}
    fresh = ctx.settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE
    loaded = await pipeline.load_to_intake(ctx.pipeline, list(data), fresh)
    decisions = {d.message_id: d for d in map(decide_intake, loaded)}
    results = await pipeline.apply_intake(ctx.pipeline, list(decisions.values()))
    replies = []
    moved = set()
    for result in results:
        moved.add(result.message_id)
        reply = _reply(data[result.message_id], result, decisions[result.message_id])
        if reply is not None:
            replies.append(reply)
    for message_id in decisions.keys() - moved:  # blocked, or moved by someone else first
        held = await held_if_blocked(ctx, data[message_id], "received")
        if held is not None:
            replies.append(held)
    return replies


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    """One event: a batch of one."""
    replies = await handle_batch(ctx, [event])
    return replies[0] if replies else None
