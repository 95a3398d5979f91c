"""Two small functions that only a Knative install needs.

ticker: a PingSource emits `dev.knative.sources.ping` every minute into the Broker; ticker
answers with the catalogue's `tick` event, which the sweeps subscribe to.
dead_letter: the Broker's dead-letter sink; events that failed every retry are logged (the
database still holds the messages and the sweep re-drives them, so nothing is lost).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.events import EventType, Tick, make_event
from remails.log import log_event

__all__ = ["PING_TYPE", "TICKER_FILTERS", "dead_letter", "ticker"]

PING_TYPE = "dev.knative.sources.ping"
TICKER_FILTERS = [{"exact": {"type": PING_TYPE}}]

logger = logging.getLogger("remails.cluster")


async def ticker(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    return make_event(EventType.TICK, Tick(at=datetime.now(UTC)))


async def dead_letter(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    attributes = event.get_attributes()
    log_event(
        logger,
        "dead letter",
        logging.ERROR,
        event_type=attributes.get("type"),
        event_id=attributes.get("id"),
        msgid=attributes.get("msgid"),
        error_code=attributes.get("knativeerrorcode"),
        error_dest=attributes.get("knativeerrordest"),
    )
    return None
