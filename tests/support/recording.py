"""A publisher that records events instead of sending them anywhere."""

from __future__ import annotations

from cloudevents.http import CloudEvent


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def publish(self, event: CloudEvent) -> None:
        self.events.append(event)

    def of_type(self, event_type: str) -> list[CloudEvent]:
        return [e for e in self.events if e["type"] == event_type]
