"""webhooks: post outcome events to the endpoints customers registered, signed, retried.

The outbox rows are written by the statement that changes a message's status (SQL function
`enqueue_webhooks`), so an outcome's webhooks are never lost to a crash. This function sends
what is due: the message's deliveries when its outcome event arrives, and anything due or
stuck on every `tick`. At least once, with a stable `webhook-id` for receivers to
de-duplicate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from datetime import UTC, datetime
from uuid import UUID

import httpx
from cloudevents.http import CloudEvent

from remails import metrics
from remails.context import Context
from remails.db import webhook_deliveries
from remails.db.webhook_deliveries import Delivery
from remails.errors import UnsafeTarget
from remails.events import EventType, MessageOutcome, event_data
from remails.log import log_event
from remails.webhook_endpoints import open_secrets
from remails.webhook_policy import next_delay, should_retry
from remails.webhook_signing import signature_header
from remails.webhook_targets import check_target, pinned

__all__ = [
    "OUTCOME_FILTERS",
    "TICK_FILTERS",
    "handle_outcome",
    "handle_tick",
    "send_due",
]

OUTCOME_TYPES = [
    EventType.MESSAGE_DELIVERED,
    EventType.MESSAGE_DEFERRED,
    EventType.MESSAGE_BOUNCED,
    EventType.MESSAGE_FAILED,
    EventType.MESSAGE_HELD,
    EventType.MESSAGE_REJECTED,
    EventType.MESSAGE_COMPLAINED,
]
OUTCOME_FILTERS = [{"any": [{"exact": {"type": t.value}} for t in OUTCOME_TYPES]}]
TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]

BATCH = 20  # deliveries claimed at once, and posted concurrently
PER_ENDPOINT = 5  # at most this many of one endpoint in a batch: a slow receiver holds few slots

logger = logging.getLogger("remails.webhooks")


def _lease(ctx: Context) -> float:
    """A claimed delivery is not taken again for this long (an attempt is bounded by the
    timeout); after a crash it is sent again once the lease has passed."""
    return 2 * ctx.settings.webhook_timeout_seconds + 5.0


def _body(delivery: Delivery) -> bytes:
    return json.dumps(
        {"id": str(delivery.id), **delivery.payload}, separators=(",", ":"), sort_keys=True
    ).encode()


async def _drain(response: httpx.Response, limit: int) -> None:
    """Read at most `limit` bytes of the answer (only its status matters): a receiver cannot
    make us hold a large body. A longer one is left unread and its connection closed."""
    if limit <= 0:
        return
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= limit:
            break


async def _post(ctx: Context, client: httpx.AsyncClient, delivery: Delivery) -> tuple[int | None, str | None]:
    try:
        address = await check_target(ctx.settings, delivery.url)
    except UnsafeTarget as exc:
        return 400, f"refused target: {exc}"  # 4xx: not retried
    url, pin_headers, extensions = pinned(delivery.url, address)
    body = _body(delivery)
    timestamp = int(time.time())
    secrets = open_secrets(ctx.master_key, delivery.endpoint_id, delivery.secrets_sealed)
    headers = {
        "content-type": "application/json",
        "user-agent": "Remails-Webhooks/1",
        "webhook-id": str(delivery.id),
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, str(delivery.id), timestamp, body),
        **pin_headers,
    }
    try:
        async with client.stream(
            "POST", url, content=body, headers=headers, extensions=extensions
        ) as response:
            await _drain(response, ctx.settings.webhook_response_max_bytes)
    except httpx.TimeoutException:
        return None, "timeout"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}"
    return response.status_code, None if response.is_success else f"HTTP {response.status_code}"


async def _attempt(ctx: Context, client: httpx.AsyncClient, delivery: Delivery) -> None:
    started = time.monotonic()
    try:
        # The whole attempt (resolving, connecting, sending, reading) within the timeout:
        # httpx bounds each read only, so a receiver trickling bytes would outlive the lease
        # and the delivery would be sent twice.
        async with asyncio.timeout(ctx.settings.webhook_timeout_seconds):
            status, error = await _post(ctx, client, delivery)
    except TimeoutError:
        status, error = None, "timeout"
    latency = int((time.monotonic() - started) * 1000)
    delivered = status is not None and 200 <= status < 300
    delay = None
    if not delivered and should_retry(status):
        delay = next_delay(ctx.settings.webhook_retry_schedule, delivery.attempts)
    finished = await webhook_deliveries.finish_delivery(
        ctx.pipeline,
        delivery.id,
        delivery.lease_id,
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
        recorded=finished is not None,
    )
    metrics.webhook_delivery(delivered, retrying=delay is not None)
    if finished is None:  # claimed again, resent or dropped meanwhile: that one counts
        log_event(logger, "webhook lease lost", webhook_id=delivery.id, endpoint_id=delivery.endpoint_id)
    elif finished.disabled_now:
        # the organization sees it on the endpoint (enabled false, disabled_reason) and a notification
        log_event(
            logger,
            "webhook endpoint disabled",
            logging.WARNING,
            endpoint_id=delivery.endpoint_id,
            reason=finished.disabled_reason,
            dropped=finished.dropped,
        )


async def _claim(ctx: Context, message_id: UUID | None) -> list[Delivery]:
    return await webhook_deliveries.claim_due(ctx.pipeline, message_id, BATCH, PER_ENDPOINT, _lease(ctx))


async def send_due(ctx: Context, message_id: UUID | None, max_batches: int = 25) -> int:
    """Send the due deliveries (of one message, or all), a batch at a time; how many were tried."""
    due = await _claim(ctx, message_id)
    if not due:
        return 0  # the common case on a tick: no client is built (building one costs milliseconds)
    tried = 0
    limit = ctx.settings.webhook_timeout_seconds
    timeout = httpx.Timeout(limit, connect=min(5.0, limit))
    verify: ssl.SSLContext | bool = True
    if ctx.settings.tls_ca_file is not None:  # REMAILS_TLS_CA_FILE: trusted beside the system CAs
        verify = ssl.create_default_context()
        verify.load_verify_locations(cafile=ctx.settings.tls_ca_file)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, verify=verify) as client:
        for _ in range(max_batches):
            await asyncio.gather(*(_attempt(ctx, client, d) for d in due))
            tried += len(due)
            due = await _claim(ctx, message_id)
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
