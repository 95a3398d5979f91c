"""dns_check: re-check verified domains' DNS records every REMAILS_DNS_RECHECK_SECONDS.

tick → takes the verified domains due for a check, looks their records up, and stores the
result; a domain whose records stopped matching becomes `invalid` (a `domain.invalid`
notification), one that matches again `verified` (`domain.valid`) — written in the statement
that changes the status, so one change is one notification, never one per tick. A lookup that
fails (timeout, SERVFAIL) proves nothing: the status stays and the domain is tried next period.
"""

from __future__ import annotations

import logging

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import notifications
from remails.dns import DnsFailure, make_resolver, txt_records
from remails.domain_records import check_records, expected_records
from remails.events import EventType
from remails.log import log_event

__all__ = ["BATCH", "TICK_FILTERS", "handle_tick"]

TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]
BATCH = 50

logger = logging.getLogger("remails.dns_check")


async def handle_tick(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    due = await notifications.due_rechecks(ctx.pool, ctx.settings.dns_recheck_seconds, BATCH)
    if not due:
        return None
    resolver = make_resolver(ctx.settings)
    for domain in due:
        records = expected_records(
            domain.name, domain.dkim_selector, domain.dkim_public_key, ctx.settings.outbound_ips
        )
        try:
            found = {r.kind: await txt_records(resolver, r.name) for r in records}
        except DnsFailure as exc:
            log_event(logger, "re-check inconclusive", logging.WARNING, domain=domain.name, error=str(exc))
            continue
        ok, checks = check_records(records, found)
        result = {
            "domain": domain.name,
            "verified": ok,
            "checks": {k: c.as_dict() for k, c in checks.items()},
        }
        kind = await notifications.record_recheck(ctx.pool, domain.id, ok, result)
        if kind is not None:
            log_event(logger, "domain status changed", domain=domain.name, notification=kind)
    return None
