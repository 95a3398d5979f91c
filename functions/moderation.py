"""Moderation in the pipeline: a blocked organization's message is held wherever it stands.

Each step's transition moves a message only while its organization may send; when it finds
nothing to move, the handler asks here whether that was a block (hold it, say so) or a
duplicate (do nothing). Lifting the block resumes held messages where they stopped.
"""

from __future__ import annotations

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import pipeline
from remails.events import EventType, MessageEvent, MessageOutcome, make_event

__all__ = ["held_if_blocked"]


async def held_if_blocked(ctx: Context, data: MessageEvent, expected: str) -> CloudEvent | None:
    """Hold the message (still in `expected`) if its organization is blocked and return the
    `message.held` event; None when it was not blocked (another handler moved it first)."""
    queued = await pipeline.hold_blocked(ctx.pipeline, data.message_id, [expected])
    if queued is None:
        return None
    outcome = MessageOutcome(
        **data.model_dump(), status="held", reason=pipeline.BLOCKED_REASON, webhooks=queued
    )
    return make_event(EventType.MESSAGE_HELD, outcome)
