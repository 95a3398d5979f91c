"""The CloudEvent functions: each decides one step of the message path.

`HANDLERS` names every function with the trigger filters it subscribes with; the all-in-one
runtime subscribes them to the in-process bus, and `functions/main.py` serves them over HTTP
for Knative. Both use the same handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cloudevents.http import CloudEvent

from remails.bus.filters import Filter
from remails.context import Context
from remails_functions import (
    cluster,
    dns_check,
    inbound,
    ip_manager,
    notify,
    quota,
    retry,
    route,
    validate,
    webhooks,
)

__all__ = ["ALL_SUBSCRIPTIONS", "CLUSTER_ONLY", "HANDLERS", "FunctionHandler", "Subscription"]

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
    Subscription("notify", notify.TICK_FILTERS, notify.handle_tick),
    Subscription("dns_check", dns_check.TICK_FILTERS, dns_check.handle_tick),
    Subscription("inbound", inbound.FILTERS, inbound.handle),
    Subscription("inbound", inbound.TICK_FILTERS, inbound.handle_tick),
]

# Functions that only make sense on Kubernetes (the in-process bus needs no Triggers).
CLUSTER_ONLY: list[Subscription] = [
    Subscription("ip_manager", ip_manager.FILTERS, ip_manager.handle),
    Subscription("ticker", cluster.TICKER_FILTERS, cluster.ticker),
    Subscription("dead_letter", [], cluster.dead_letter),  # the Broker's dead-letter sink: no Trigger
]

ALL_SUBSCRIPTIONS: list[Subscription] = [*HANDLERS, *CLUSTER_ONLY]
