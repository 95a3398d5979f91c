"""route: choose the egress source (outbound IP) for a message.

The organization's dedicated pool when it has one, else the shared pool; only IPs whose
sender node has a fresh heartbeat. message.admitted → message.routed (`outboundip` set).
"""

from __future__ import annotations

import hashlib
import logging
from uuid import UUID

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import pipeline
from remails.events import EventType, MessageEvent, MessageRouted, event_data, make_event
from remails.log import log_event
from remails_functions.moderation import held_if_blocked

__all__ = ["FILTERS", "choose_egress", "handle"]

FILTERS = [{"exact": {"type": EventType.MESSAGE_ADMITTED.value}}]

logger = logging.getLogger("remails.route")

HEARTBEATS_TO_BE_LIVE = 3


def choose_egress(live_ips: list[str], message_id: UUID, attempt: int) -> str | None:
    """Spread messages evenly over the pool by hashing the message id; a retry moves to the
    next IP, so one bad IP does not hold a message back."""
    if not live_ips:
        return None
    ordered = sorted(live_ips)
    start = int.from_bytes(hashlib.sha256(message_id.bytes).digest()[:8], "big")
    return ordered[(start + attempt) % len(ordered)]


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, MessageEvent)
    fresh = ctx.settings.heartbeat_seconds * HEARTBEATS_TO_BE_LIVE
    message = await pipeline.load_to_route(ctx.pipeline, data.message_id, fresh)
    if message is None or message.status != "admitted":
        return None
    ip = choose_egress(message.live_ips, data.message_id, message.attempts)
    if ip is None:
        held = await held_if_blocked(ctx, data, "admitted")
        if held is not None:
            return held
        # Stays admitted; the sweep routes it again once a sender node is back.
        log_event(logger, "no live egress source", logging.WARNING, message_id=data.message_id)
        return None
    if not await pipeline.set_route(ctx.pipeline, data.message_id, ip):
        return await held_if_blocked(ctx, data, "admitted")
    return make_event(EventType.MESSAGE_ROUTED, MessageRouted(**data.model_dump(), outbound_ip=ip))
