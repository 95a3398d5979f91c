"""validate: is the stored message well-formed and may its project send it? Who is suppressed?

message.received → message.validated | message.rejected
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudevents.http import CloudEvent

from remails import metrics
from remails.context import Context
from remails.db import pipeline
from remails.domain_records import is_same_or_subdomain
from remails.events import EventType, MessageEvent, MessageOutcome, event_data, make_event
from remails.message_headers import header_block
from remails.sending_policy import from_addresses
from remails_functions.moderation import held_if_blocked

__all__ = ["FILTERS", "Validation", "decide", "handle"]

FILTERS = [{"exact": {"type": EventType.MESSAGE_RECEIVED.value}}]


@dataclass(frozen=True)
class Validation:
    reject_reason: str | None
    suppressed: list[str]


def _verified_parent(domain: str, verified: list[str]) -> str | None:
    matches = [d for d in verified if is_same_or_subdomain(domain, d)]
    return max(matches, key=len) if matches else None


def decide(
    headers: bytes,
    mail_from: str,
    verified_domains: list[str],
    recipients: list[str],
    suppressed: set[str],
) -> Validation:
    """Reject unless every address of the one From field (read from the whole header block)
    and the envelope sender sit under one verified domain of the project (DMARC-style
    alignment, dot boundary); list the suppressed recipients."""
    envelope_domain = mail_from.rpartition("@")[2].lower()
    envelope_parent = _verified_parent(envelope_domain, verified_domains)
    if envelope_parent is None:
        return Validation(f"envelope sender domain {envelope_domain} is not verified for this project", [])
    addresses = from_addresses(headers)
    if isinstance(addresses, str):
        return Validation(addresses, [])
    for address in addresses:
        if _verified_parent(address.domain.lower(), [envelope_parent]) is None:
            return Validation(
                f"From domain {address.domain.lower()} does not align"
                f" with the sender domain {envelope_parent}",
                [],
            )
    live = [r for r in recipients if r.lower() not in suppressed]
    if not live:
        return Validation("every recipient is on the suppression list", list(recipients))
    return Validation(None, [r for r in recipients if r.lower() in suppressed])


async def handle(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    data = event_data(event, MessageEvent)
    message = await pipeline.load_to_validate(ctx.pipeline, data.message_id)
    if message is None or message.status != "received":
        return None  # a duplicate, or already moved on
    decision = decide(
        header_block(message.head),
        message.mail_from,
        message.verified_domains,
        message.recipients,
        message.suppressed,
    )
    queued = await pipeline.apply_validation(
        ctx.pipeline, data.message_id, decision.suppressed, decision.reject_reason
    )
    if queued is None:
        return await held_if_blocked(ctx, data, "received")
    if decision.reject_reason is not None:
        metrics.finished("rejected")
        outcome = MessageOutcome(
            **data.model_dump(), status="rejected", reason=decision.reject_reason, webhooks=queued
        )
        return make_event(EventType.MESSAGE_REJECTED, outcome)
    return make_event(EventType.MESSAGE_VALIDATED, data)
