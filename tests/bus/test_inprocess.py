"""The in-process broker: Knative filter semantics, retries with backoff, dead letters, replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from cloudevents.http import CloudEvent

from remails.bus import Trigger
from remails.bus.inprocess import InProcessBus
from remails.events import EventType, MessageEvent, MessageRouted, make_event
from tests.support.wait import wait_until


def _routed(ip: str) -> CloudEvent:
    return make_event(
        EventType.MESSAGE_ROUTED,
        MessageRouted(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4(), outbound_ip=ip),
    )


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    b = InProcessBus(workers=4, max_attempts=3, backoff_base=0.01, backoff_cap=0.05)
    b.start()
    yield b
    await b.stop()


async def test_delivers_matching_events_only(bus: InProcessBus) -> None:
    seen: list[str] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(event["outboundip"])

    filters = [{"exact": {"type": "message.routed", "outboundip": "127.0.0.2"}}]
    bus.subscribe(Trigger("sender-127.0.0.2", filters, handler))
    for ip in ("127.0.0.3", "127.0.0.2", "127.0.0.4"):
        await bus.publish(_routed(ip))
    await bus.drain()
    assert seen == ["127.0.0.2"]


async def test_retries_a_failing_handler_until_it_succeeds(bus: InProcessBus) -> None:
    calls = 0

    async def flaky(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("database briefly away")

    bus.subscribe(Trigger("flaky", [{"exact": {"type": "message.routed"}}], flaky))
    await bus.publish(_routed("127.0.0.2"))
    await wait_until(lambda: calls == 3)
    assert bus.dead_letters == []


async def test_dead_letters_after_the_limit(bus: InProcessBus) -> None:
    calls = 0

    async def broken(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("always")

    bus.subscribe(Trigger("broken", [{"exact": {"type": "message.routed"}}], broken))
    event = _routed("127.0.0.2")
    await bus.publish(event)
    await wait_until(lambda: len(bus.dead_letters) == 1)
    assert calls == bus.max_attempts
    letter = bus.dead_letters[0]
    assert letter.trigger == "broken" and letter.event["id"] == event["id"]
    assert "ValueError: always" in letter.error


async def test_reply_events_are_published_back(bus: InProcessBus) -> None:
    validated: asyncio.Queue[CloudEvent] = asyncio.Queue()

    async def validate(event: CloudEvent) -> CloudEvent:
        data = MessageEvent.model_validate(event.data)
        return make_event(EventType.MESSAGE_VALIDATED, data)

    async def collect(event: CloudEvent) -> None:
        validated.put_nowait(event)

    bus.subscribe(Trigger("validate", [{"exact": {"type": "message.received"}}], validate))
    bus.subscribe(Trigger("next", [{"exact": {"type": "message.validated"}}], collect))
    data = MessageEvent(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4())
    await bus.publish(make_event(EventType.MESSAGE_RECEIVED, data))
    reply = await asyncio.wait_for(validated.get(), 5)
    assert reply["msgid"] == str(data.message_id)
