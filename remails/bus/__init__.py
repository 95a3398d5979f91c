"""Event buses: where published CloudEvents go. `inprocess` for one process, `knative` for K8s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cloudevents.http import CloudEvent

from remails.bus.filters import Filter, matches, required_type

__all__ = ["BatchHandler", "Handler", "Publisher", "Trigger", "matches", "required_type"]

Handler = Callable[[CloudEvent], Awaitable[CloudEvent | None]]
# Several events of one trigger at once; the replies to publish (any number, in any order).
BatchHandler = Callable[[Sequence[CloudEvent]], Awaitable[Sequence[CloudEvent]]]


class Publisher(Protocol):
    async def publish(self, event: CloudEvent) -> None: ...


@dataclass(frozen=True)
class Trigger:
    """A subscription: events whose attributes match `filters` go to `handler`, or, on a bus
    that batches, the events pending at once to `batch_handler` when there is one."""

    name: str
    filters: Sequence[Filter]
    handler: Handler
    batch_handler: BatchHandler | None = None
