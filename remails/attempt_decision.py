"""The decide step: what an attempt means for each recipient and for the message.

`decide_outcome` is the pure decision the retry function applies to an `attempted` message,
kept in the kernel beside the outcome event it ends with, so that any role holding the
message's state can decide it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime

from cloudevents.http import CloudEvent

from remails import metrics
from remails.db import pipeline
from remails.db.rows import Executor
from remails.events import EventType, MessageOutcome, make_event
from remails.log import log_event
from remails.outcomes import (
    RecipientResult,
    RetryPolicy,
    classify,
    is_hard_bounce,
    message_outcome,
    next_attempt_at,
)

__all__ = ["apply_decisions", "decide_outcome", "outcome_counts", "outcome_event"]

logger = logging.getLogger("remails.decide")

_OUTCOME_EVENTS = {
    "delivered": EventType.MESSAGE_DELIVERED,
    "deferred": EventType.MESSAGE_DEFERRED,
    "bounced": EventType.MESSAGE_BOUNCED,
    "failed": EventType.MESSAGE_FAILED,
}


def _reply_text(result: RecipientResult) -> str:
    parts = [str(result.code) if result.code else "", result.enhanced or "", result.text]
    return " ".join(p for p in parts if p)


def outcome_counts(outcome: pipeline.Outcome) -> dict[str, int]:
    """How many recipients got each disposition in this decision."""
    values = list(outcome.recipient_statuses.values())
    return {s: values.count(s) for s in sorted(set(values))}


def outcome_event(key: pipeline.MessageKey, outcome: pipeline.Outcome, webhooks: int) -> CloudEvent:
    """The message.<outcome> event of a decision that was applied."""
    data = MessageOutcome(
        message_id=key.id,
        organization_id=key.organization_id,
        project_id=key.project_id,
        status=outcome.status,
        reason=outcome.reason,
        webhooks=webhooks,
    )
    return make_event(_OUTCOME_EVENTS[outcome.status], data)


def decide_outcome(
    message: pipeline.Attempted, now: datetime, policy: RetryPolicy, jitter: float
) -> pipeline.Outcome:
    """Each waiting recipient's fate from its last reply, the message's from theirs, and the
    hard bounces to suppress."""
    retry_at = next_attempt_at(message.attempts, now, message.expires_at, policy, jitter)
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
    now_statuses = [statuses.get(r.id, r.status) for r in message.recipients]
    final = message_outcome(now_statuses + list(message.settled))
    outcome = pipeline.Outcome(message.key.id, final, None, None, statuses, suppress)
    # Not the delivered ones: a recipient delivered by an earlier record of this attempt is not
    # decided here, so the reason must not depend on which step stored its reply.
    counts = outcome_counts(outcome).items()
    reason = ", ".join(f"{n} {s}" for s, n in counts if s != "delivered") or None
    next_attempt = retry_at if final == "deferred" else None
    return pipeline.Outcome(message.key.id, final, reason, next_attempt, statuses, suppress)


async def apply_decisions(
    conn: Executor,
    messages: Sequence[pipeline.Attempted],
    policy: RetryPolicy,
    finishes: Sequence[pipeline.SenderFinish] | None = None,
) -> list[CloudEvent]:
    """Decide each message, move them in one statement, and return the outcome events of those
    that moved (a message another decision moved first is left out). `finishes` (one for each
    message): the messages are still `sending` under those leases — the sender deciding its own
    attempts, whose last destinations' attempts (not recorded yet) the same statement stores."""
    now = datetime.now(UTC)
    outcomes = [decide_outcome(m, now, policy, random.uniform(-1, 1)) for m in messages]
    if finishes is not None:
        finishes = [
            dataclasses.replace(f, recipient_ids={r.address: r.id for r in m.recipients})
            if f.attempt is not None
            else f
            for m, f in zip(messages, finishes, strict=True)
        ]
    queued = await pipeline.apply_outcomes(conn, outcomes, finishes)
    events = []
    for message, outcome in zip(messages, outcomes, strict=True):
        if message.key.id not in queued:
            continue
        metrics.finished(outcome.status, message.created_at)
        log_event(
            logger,
            "attempt decided",
            message_id=message.key.id,
            status=outcome.status,
            attempts=message.attempts,
            **outcome_counts(outcome),
        )
        events.append(outcome_event(message.key, outcome, queued[message.key.id]))
    return events
