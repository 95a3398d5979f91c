"""dns_check: re-check verified domains' DNS records every REMAILS_DNS_RECHECK_SECONDS.

tick → takes the verified domains due for a check, looks their records up, and stores the
result; a domain whose records stopped matching becomes `invalid` (a `domain.invalid`
notification), one that matches again `verified` (`domain.valid`) — written in the statement
that changes the status, so one change is one notification, never one per tick. A domain with
a verified return path (rp.<domain>) also needs its MX and SPF there. A TXT lookup that
fails (timeout, SERVFAIL) proves nothing: the status stays and the domain is tried next period.
"""

from __future__ import annotations

import logging
from typing import Any

import dns.asyncresolver
from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import notifications
from remails.dns import DnsFailure, make_resolver, txt_records
from remails.domain_records import check_records, expected_records, return_path_records
from remails.events import EventType
from remails.log import log_event
from remails.sending_domains import check_return_path

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
        try:
            ok, result = await _recheck(ctx, resolver, domain)
        except DnsFailure as exc:
            log_event(logger, "re-check inconclusive", logging.WARNING, domain=domain.name, error=str(exc))
            continue
        kind = await notifications.record_recheck(ctx.pool, domain.id, ok, result)
        if kind is not None:
            log_event(logger, "domain status changed", domain=domain.name, notification=kind)
    return None


async def _recheck(
    ctx: Context, resolver: dns.asyncresolver.Resolver, domain: notifications.DomainToCheck
) -> tuple[bool, dict[str, Any]]:
    """(do the records still match, the result to store). A domain with a verified return
    path needs its MX and SPF at rp.<domain> too: bounces come back there."""
    settings = ctx.settings
    records = expected_records(
        domain.name, domain.dkim_selector, domain.dkim_public_key, settings.outbound_ips
    )
    found = {r.kind: await txt_records(resolver, r.name) for r in records}
    ok, checks = check_records(records, found)
    result: dict[str, Any] = {
        "domain": domain.name,
        "verified": ok,
        "checks": {k: c.as_dict() for k, c in checks.items()},
    }
    if domain.return_path:
        return_path, rp_ok = await check_return_path(
            resolver, domain.name, settings.outbound_ips, settings.hostname, strict=True
        )
        result["return_path"] = return_path
        result["checks"]["return_path"] = {
            "ok": rp_ok,
            "found": {"mx": return_path["mx"], "txt": return_path["txt"]},
            "expected": [
                r.as_dict()
                for r in return_path_records(return_path["domain"], settings.hostname, settings.outbound_ips)
            ],
        }
        ok = ok and rp_ok
        result["verified"] = ok
    return ok, result
