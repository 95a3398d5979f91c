"""`remails up`'s sender process (REMAILS_SENDER_PROCESS): the sender node alone — claim, sign,
deliver, decide — on a core of its own, linked to the front process that accepts and routes.

Like smtp(8) beside smtpd(8): message.routed arrives over the link, the node's outcome events
go back over it to the front's bus (webhooks, notices). PostgreSQL remains the truth: when the
link or either process breaks, the leases and the sweep cover what was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from remails import metrics
from remails.bus.link import LinkEnd, connect_link
from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import connect
from remails.errors import ConfigError
from remails.log import log_event
from remails.runtime.lifecycle import in_process_bus, pipeline_pools, stop_event
from remails.runtime.readiness import report_ready
from remails_sender_node.agent import SenderNode

__all__ = ["run_sender_worker"]

logger = logging.getLogger("remails.runtime")


async def run_sender_worker(settings: Settings) -> None:
    if settings.sender_link is None or settings.database_url is None:
        raise ConfigError("the sender process is started by `remails up` (REMAILS_SENDER_LINK)")
    stop = stop_event()
    bus = in_process_bus(settings)
    link = LinkEnd(bus.publish)  # the front's events to this bus; ours to the front
    db = await connect(settings, max_size=4, run_migrations=False)  # the supervisor migrated
    pipeline_pool = await db.open_pipeline_pool(max_size=settings.db_pipeline_pool_size)
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    ctx = Context(settings, db.pool, link, master_key, pipeline_pool)
    metrics.watch_pools({"main": db.pool, **pipeline_pools(db)})
    sampler = asyncio.create_task(metrics.sample_pools_forever())
    sender = SenderNode(ctx, decides=True)
    for trigger in sender.triggers():
        bus.subscribe(trigger)
    bus.start()
    await sender.start()  # registered before connecting: the front routes to us once we are linked
    report_ready()
    linked = asyncio.create_task(connect_link(settings.sender_link, link, stop))
    try:
        await stop.wait()
    finally:
        log_event(logger, "stopping", role="sender")
        sampler.cancel()
        await sender.stop()
        await bus.stop()
        await link.close()
        linked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await linked
        await db.close()
