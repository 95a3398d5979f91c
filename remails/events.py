"""The event catalogue: every CloudEvent type, its data model and its routable extensions.

Events are notices: data carries ids, never message bodies. Anything a Trigger filters on is
an extension attribute (lowercase alphanumeric), because broker filters never read `data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar
from uuid import UUID

from cloudevents.http import CloudEvent
from pydantic import BaseModel, ConfigDict

__all__ = [
    "CATALOGUE",
    "DeliveryAttempted",
    "EventSpec",
    "EventType",
    "InboundReceived",
    "MessageEvent",
    "MessageOutcome",
    "MessageRouted",
    "Tick",
    "event_data",
    "make_event",
]


class EventType(StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_VALIDATED = "message.validated"
    MESSAGE_ADMITTED = "message.admitted"
    MESSAGE_ROUTED = "message.routed"
    DELIVERY_ATTEMPTED = "delivery.attempted"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_BOUNCED = "message.bounced"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_HELD = "message.held"
    MESSAGE_REJECTED = "message.rejected"
    MESSAGE_COMPLAINED = "message.complained"
    INBOUND_RECEIVED = "inbound.received"
    TICK = "tick"


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class MessageEvent(_Data):
    """Which message moved; the database holds everything else."""

    message_id: UUID
    organization_id: UUID
    project_id: UUID


class MessageRouted(MessageEvent):
    outbound_ip: str


class DeliveryAttempted(MessageEvent):
    outbound_ip: str | None = None


class MessageOutcome(MessageEvent):
    status: str
    reason: str | None = None
    webhooks: int = 0  # outbox rows written with this outcome; 0 lets the webhooks function skip


class Tick(_Data):
    at: datetime


class InboundReceived(_Data):
    """Mail the inbound MX stored (a bounce, a complaint, a report); not about one message yet."""

    inbound_id: UUID
    kind: str


@dataclass(frozen=True)
class EventSpec:
    event_type: EventType
    source: str
    data_model: type[_Data]
    extensions: tuple[str, ...]


_MSG_EXT = ("orgid", "projectid", "msgid")


def _spec(t: EventType, source: str, data: type[_Data], *extra: str) -> EventSpec:
    ext = () if data in (Tick, InboundReceived) else (*_MSG_EXT, *extra)
    return EventSpec(t, source, data, ext)


CATALOGUE: dict[str, EventSpec] = {
    s.event_type.value: s
    for s in [
        _spec(EventType.MESSAGE_RECEIVED, "/remails/intake", MessageEvent),
        _spec(EventType.MESSAGE_VALIDATED, "/remails/validate", MessageEvent),
        _spec(EventType.MESSAGE_ADMITTED, "/remails/quota", MessageEvent),
        _spec(EventType.MESSAGE_ROUTED, "/remails/route", MessageRouted, "outboundip"),
        _spec(EventType.DELIVERY_ATTEMPTED, "/remails/sender", DeliveryAttempted),
        _spec(EventType.MESSAGE_DELIVERED, "/remails/retry", MessageOutcome),
        _spec(EventType.MESSAGE_DEFERRED, "/remails/retry", MessageOutcome),
        _spec(EventType.MESSAGE_BOUNCED, "/remails/retry", MessageOutcome),
        _spec(EventType.MESSAGE_FAILED, "/remails/retry", MessageOutcome),
        _spec(EventType.MESSAGE_HELD, "/remails/quota", MessageOutcome),
        _spec(EventType.MESSAGE_REJECTED, "/remails/validate", MessageOutcome),
        _spec(EventType.MESSAGE_COMPLAINED, "/remails/inbound", MessageOutcome),
        _spec(EventType.INBOUND_RECEIVED, "/remails/inbound-mx", InboundReceived),
        _spec(EventType.TICK, "/remails/ticker", Tick),
    ]
}

_EXTENSION_FIELDS = {
    "orgid": "organization_id",
    "projectid": "project_id",
    "msgid": "message_id",
    "outboundip": "outbound_ip",
}

D = TypeVar("D", bound=_Data)


def make_event(event_type: EventType, data: _Data) -> CloudEvent:
    """A binary-mode-ready CloudEvent with its extensions taken from the data."""
    spec = CATALOGUE[event_type.value]
    if not isinstance(data, spec.data_model):
        model = spec.data_model.__name__
        raise TypeError(f"{event_type} carries {model}, not {type(data).__name__}")
    attributes: dict[str, Any] = {
        "type": spec.event_type.value,
        "source": spec.source,
        "datacontenttype": "application/json",
    }
    for ext in spec.extensions:
        attributes[ext] = str(getattr(data, _EXTENSION_FIELDS[ext]))
    return CloudEvent(attributes, data.model_dump(mode="json"))


def event_data(event: CloudEvent, model: type[D]) -> D:
    """The event's data as `model`; raises pydantic.ValidationError when it does not fit."""
    return model.model_validate(event.data)
