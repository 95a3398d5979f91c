"""The CloudEvent functions: each decides one step of the message path.

`HANDLERS` names every function with the trigger filters it subscribes with; the all-in-one
runtime subscribes them to the in-process bus, and `functions/main.py` serves them over HTTP
for Knative. Both use the same handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cloudevents.http import CloudEvent

from functions import quota, retry, route, validate, webhooks
from remails.bus.filters import Filter
from remails.context import Context

__all__ = ["HANDLERS", "FunctionHandler", "Subscription"]

FunctionHandler = Callable[[Context, CloudEvent], Awaitable[CloudEvent | None]]


@dataclass(frozen=True)
class Subscription:
    function: str  # the functions-framework target serving it
    filters: Sequence[Filter]
    handler: FunctionHandler


HANDLERS: list[Subscription] = [
    Subscription("validate", validate.FILTERS, validate.handle),
    Subscription("quota", quota.FILTERS, quota.handle),
    Subscription("route", route.FILTERS, route.handle),
    Subscription("retry", retry.ATTEMPT_FILTERS, retry.handle_attempted),
    Subscription("retry", retry.TICK_FILTERS, retry.handle_tick),
    Subscription("webhooks", webhooks.OUTCOME_FILTERS, webhooks.handle_outcome),
    Subscription("webhooks", webhooks.TICK_FILTERS, webhooks.handle_tick),
]
