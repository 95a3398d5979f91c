"""Delivery outcomes: what an SMTP reply means for a recipient and for the whole message.

Pure functions of plain data; the retry function applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from remails.backoff import exponential_delay

__all__ = [
    "RecipientResult",
    "RetryPolicy",
    "classify",
    "is_hard_bounce",
    "message_outcome",
    "next_attempt_at",
    "split_enhanced",
]

Disposition = Literal["delivered", "bounced", "deferred", "failed"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b\s*")


def split_enhanced(text: str) -> tuple[str | None, str]:
    """`"5.1.1 No such user"` → (`"5.1.1"`, `"No such user"`)."""
    match = _ENHANCED.match(text)
    if match is None:
        return None, text
    return match.group(0).strip(), text[match.end() :]


@dataclass(frozen=True)
class RecipientResult:
    """The last reply for one recipient: an SMTP code, or None for a DNS/connection failure
    (then `enhanced` says which class: 4.x.x temporary, 5.x.x permanent)."""

    code: int | None
    enhanced: str | None
    text: str


def classify(result: RecipientResult) -> Literal["delivered", "bounced", "deferred"]:
    """2xx delivered; 5xx (or a permanent 5.x.x failure without a code) bounced; else deferred."""
    if result.code is not None:
        if 200 <= result.code < 300:
            return "delivered"
        if 500 <= result.code < 600:
            return "bounced"
        return "deferred"
    if result.enhanced is not None and result.enhanced.startswith("5."):
        return "bounced"
    return "deferred"


def is_hard_bounce(result: RecipientResult) -> bool:
    """A permanent failure about the address itself (5.1.x: no such mailbox, bad domain…).

    Policy refusals (5.7.x spam blocks) and other permanent errors say nothing certain
    about the address, so they do not suppress it. Without an enhanced code, 550/551/553
    are the mailbox-unavailable family.
    """
    if classify(result) != "bounced":
        return False
    if result.enhanced is not None:
        return result.enhanced.startswith("5.1.")
    return result.code in (550, 551, 553)


@dataclass(frozen=True)
class RetryPolicy:
    first_seconds: float
    max_seconds: float


def next_attempt_at(
    attempts: int, now: datetime, expires_at: datetime, policy: RetryPolicy, jitter: float
) -> datetime | None:
    """When to try again after `attempts` attempts; None when that would be past the expiry."""
    delay = exponential_delay(attempts, base=policy.first_seconds, cap=policy.max_seconds, jitter=jitter)
    when = now + timedelta(seconds=delay)
    return when if when < expires_at else None


MessageDisposition = Literal["delivered", "bounced", "deferred", "failed"]


def message_outcome(recipient_statuses: list[str]) -> MessageDisposition:
    """The message's status from its recipients' (suppressed recipients do not count)."""
    live = [s for s in recipient_statuses if s != "suppressed"]
    if not live:
        return "failed"
    if any(s in ("pending", "deferred") for s in live):
        return "deferred"
    if any(s == "failed" for s in live):
        return "failed"
    if any(s == "bounced" for s in live):
        return "bounced"
    return "delivered"
