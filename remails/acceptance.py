"""After a message row is committed: the `message.received` notice and the count — the one
home for what the SMTP edge and the HTTP send do once a message is durably accepted.

The row is the truth; the notice only saves waiting. A notice the broker refuses is logged and
left to the sweep, which re-emits `message.received` for a message that has not moved.
"""

from __future__ import annotations

import logging
from typing import Literal

from remails import metrics
from remails.context import Context
from remails.db.messages import NewMessage
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event

__all__ = ["announce_received"]

logger = logging.getLogger("remails.acceptance")


async def announce_received(ctx: Context, new: NewMessage, via: Literal["smtp", "http"]) -> None:
    data = MessageEvent(message_id=new.id, organization_id=new.organization_id, project_id=new.project_id)
    try:
        await ctx.publisher.publish(make_event(EventType.MESSAGE_RECEIVED, data))
    except Exception as exc:  # committed already: the sweep re-emits what this missed
        log_event(logger, "publish failed", logging.WARNING, message_id=new.id, error=type(exc).__name__)
    metrics.ACCEPTED.labels(via).inc()
