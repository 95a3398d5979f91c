"""webhooks: post outcome events to the endpoints customers registered, signed, retried.

The outbox rows are written by the statement that changes a message's status (SQL function
`enqueue_webhooks`), so an outcome's webhooks are never lost to a crash. This function sends
what is due: the message's deliveries when its outcome event arrives, and anything due or
stuck on every `tick`. At least once, with a stable `webhook-id` for receivers to
de-duplicate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit
from uuid import UUID

import dns.exception
import httpx
from cloudevents.http import CloudEvent

from remails.config import Settings
from remails.context import Context
from remails.db import webhooks
from remails.dns import make_resolver
from remails.events import EventType, MessageOutcome, event_data
from remails.log import log_event
from remails.webhook_policy import forbidden_address, next_delay, should_retry
from remails.webhook_signing import signature_header

__all__ = [
    "OUTCOME_FILTERS",
    "TICK_FILTERS",
    "check_target",
    "handle_outcome",
    "handle_tick",
    "pinned",
    "send_due",
]

OUTCOME_TYPES = [
    EventType.MESSAGE_DELIVERED,
    EventType.MESSAGE_DEFERRED,
    EventType.MESSAGE_BOUNCED,
    EventType.MESSAGE_FAILED,
    EventType.MESSAGE_HELD,
    EventType.MESSAGE_REJECTED,
]
OUTCOME_FILTERS = [{"any": [{"exact": {"type": t.value}} for t in OUTCOME_TYPES]}]
TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]

BATCH = 20  # deliveries claimed at once, and posted concurrently

logger = logging.getLogger("remails.webhooks")


class UnsafeTarget(ValueError):
    """A URL that would make us call an internal address."""


async def check_target(settings: Settings, url: str) -> str | None:
    """Refuse http and private, loopback, link-local or metadata addresses unless the setting
    allows them (development and tests). Names are resolved first: a public name pointing at
    an internal address is refused too. Returns the checked address to connect to (None when
    private targets are allowed and nothing was checked)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("must be an http(s) URL with a host")
    if settings.webhooks_allow_private:
        return None
    if parts.scheme != "https":
        raise UnsafeTarget("must use https")
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        resolver = make_resolver(settings)
        addresses = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, rtype)
            except dns.exception.DNSException:
                continue
            addresses += [r.address for r in answer]
        if not addresses:
            raise UnsafeTarget(f"{host} does not resolve") from None
    if any(forbidden_address(a) for a in addresses):
        raise UnsafeTarget(f"{host} points at a private or internal address")
    return addresses[0]


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL, extra headers, httpx extensions) to POST `url` to the checked `address` while TLS
    still verifies the certificate against the host name (SNI). Connecting to the address that
    was checked, rather than resolving again, closes the DNS-rebinding window."""
    parts = urlsplit(url)
    if address is None or parts.hostname is None:
        return url, {}, {}
    host = parts.hostname
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl(), {"host": host_header}, {"sni_hostname": host}


def _lease(ctx: Context) -> float:
    """A claimed delivery is not taken again for this long (its POST runs at most the timeout);
    after a crash it is sent again once the lease has passed."""
    return 2 * ctx.settings.webhook_timeout_seconds + 5.0


def _body(delivery: webhooks.Delivery) -> bytes:
    return json.dumps(
        {"id": str(delivery.id), **delivery.payload}, separators=(",", ":"), sort_keys=True
    ).encode()


async def _post(
    ctx: Context, client: httpx.AsyncClient, delivery: webhooks.Delivery
) -> tuple[int | None, str | None]:
    try:
        address = await check_target(ctx.settings, delivery.url)
    except UnsafeTarget as exc:
        return 400, f"refused target: {exc}"  # 4xx: not retried
    url, pin_headers, extensions = pinned(delivery.url, address)
    body = _body(delivery)
    timestamp = int(time.time())
    secrets = [
        ctx.master_key.open(s, context=f"webhook:{delivery.endpoint_id}").decode()
        for s in delivery.secrets_sealed
    ]
    headers = {
        "content-type": "application/json",
        "user-agent": "Remails-Webhooks/1",
        "webhook-id": str(delivery.id),
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, str(delivery.id), timestamp, body),
        **pin_headers,
    }
    try:
        response = await client.post(url, content=body, headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return None, "timeout"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}"
    return response.status_code, None if response.is_success else f"HTTP {response.status_code}"


async def _attempt(ctx: Context, client: httpx.AsyncClient, delivery: webhooks.Delivery) -> None:
    started = time.monotonic()
    status, error = await _post(ctx, client, delivery)
    latency = int((time.monotonic() - started) * 1000)
    delivered = status is not None and 200 <= status < 300
    delay = None
    if not delivered and should_retry(status):
        delay = next_delay(ctx.settings.webhook_retry_schedule, delivery.attempts)
    enabled, why = await webhooks.finish_delivery(
        ctx.pipeline,
        delivery.id,
        delivered=delivered,
        status_code=status,
        error=error,
        latency_ms=latency,
        next_attempt_at=datetime.now(UTC) + delay if delay is not None else None,
        disable_after_seconds=ctx.settings.webhook_disable_after_seconds,
    )
    log_event(
        logger,
        "webhook",
        webhook_id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_type=delivery.event_type,
        status_code=status,
        attempt=delivery.attempts,
        latency_ms=latency,
        delivered=delivered,
    )
    if not enabled:  # the organization sees it on the endpoint (enabled false, disabled_reason)
        log_event(
            logger, "webhook endpoint disabled", logging.WARNING, endpoint_id=delivery.endpoint_id, reason=why
        )


async def send_due(ctx: Context, message_id: UUID | None, max_batches: int = 25) -> int:
    """Send the due deliveries (of one message, or all), a batch at a time; how many were tried."""
    due = await webhooks.claim_due(ctx.pipeline, message_id, BATCH, _lease(ctx))
    if not due:
        return 0  # the common case on a tick: no client is built (building one costs milliseconds)
    tried = 0
    limit = ctx.settings.webhook_timeout_seconds
    timeout = httpx.Timeout(limit, connect=min(5.0, limit))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for _ in range(max_batches):
            await asyncio.gather(*(_attempt(ctx, client, d) for d in due))
            tried += len(due)
            due = await webhooks.claim_due(ctx.pipeline, message_id, BATCH, _lease(ctx))
            if not due:
                break
    return tried


async def handle_outcome(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, MessageOutcome)
    if data.webhooks:  # no endpoint wanted this outcome: nothing to look up
        await send_due(ctx, data.message_id)
    return None


async def handle_tick(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    await send_due(ctx, None)
    return None
