"""quota: count the message against its organization's monthly quota, atomically.

message.validated → message.admitted | message.held (kept, re-driven when quota returns or a
block is lifted)
"""

from __future__ import annotations

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import pipeline
from remails.events import EventType, MessageEvent, MessageOutcome, event_data, make_event
from remails_functions.moderation import held_if_blocked

__all__ = ["FILTERS", "handle"]

FILTERS = [{"exact": {"type": EventType.MESSAGE_VALIDATED.value}}]


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, MessageEvent)
    result = await pipeline.admit(ctx.pipeline, data.message_id)
    if result is None:
        return await held_if_blocked(ctx, data, "validated")
    status, queued = result
    if status == "admitted":
        return make_event(EventType.MESSAGE_ADMITTED, data)
    outcome = MessageOutcome(
        **data.model_dump(), status="held", reason="monthly quota used up", webhooks=queued
    )
    return make_event(EventType.MESSAGE_HELD, outcome)
