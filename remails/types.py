"""The closed vocabularies shared by code, SQL enums, logs and the API."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "FINAL_MESSAGE_STATUSES",
    "FINAL_RECIPIENT_STATUSES",
    "ApiRole",
    "BlockStatus",
    "MessageStatus",
    "RecipientStatus",
    "WebhookEventType",
    "literal_values",
]

ApiRole = Literal["read_only", "maintainer", "admin"]
BlockStatus = Literal["not_blocked", "no_sending", "full_freeze"]

# received → validated → admitted → routed → sending → attempted → delivered | deferred |
# bounced | failed;
# held (quota, waits for an operator or the next month) and rejected (invalid) stop the path.
MessageStatus = Literal[
    "received",
    "validated",
    "admitted",
    "routed",
    "sending",
    "attempted",
    "deferred",
    "delivered",
    "bounced",
    "failed",
    "held",
    "rejected",
]
RecipientStatus = Literal["pending", "suppressed", "delivered", "deferred", "bounced", "failed", "complained"]

# What a webhook endpoint can subscribe to.
WebhookEventType = Literal[
    "message.delivered",
    "message.deferred",
    "message.bounced",
    "message.failed",
    "message.held",
    "message.rejected",
    "message.suppressed",
    "message.complained",
]

FINAL_MESSAGE_STATUSES: frozenset[str] = frozenset({"delivered", "bounced", "failed", "rejected"})
FINAL_RECIPIENT_STATUSES: frozenset[str] = frozenset(
    {"suppressed", "delivered", "bounced", "failed", "complained"}
)


def literal_values(literal: object) -> tuple[str, ...]:
    """The members of a Literal type, in declaration order (to compare with SQL enums)."""
    return tuple(str(v) for v in get_args(literal))
