"""The in-process broker: Knative filter semantics, retries with backoff, dead letters, replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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


async def test_triggers_pinned_to_a_type_or_not_each_get_what_their_filters_match(bus: InProcessBus) -> None:
    """Triggers are looked up by the type their filters pin (a trigger subscribed later, or one
    whose filters allow several types, is still asked)."""
    seen: dict[str, list[str]] = {"routed": [], "any": [], "prefix": [], "late": []}

    def into(name: str) -> Callable[[CloudEvent], Awaitable[None]]:
        async def handler(event: CloudEvent) -> None:
            seen[name].append(event["type"])

        return handler

    bus.subscribe(Trigger("routed", [{"exact": {"type": "message.routed"}}], into("routed")))
    either = [{"any": [{"exact": {"type": "message.routed"}}, {"exact": {"type": "message.received"}}]}]
    bus.subscribe(Trigger("any", either, into("any")))
    bus.subscribe(Trigger("prefix", [{"prefix": {"type": "message.rec"}}], into("prefix")))
    ids = MessageEvent(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4())
    received = make_event(EventType.MESSAGE_RECEIVED, ids)
    await bus.publish(_routed("127.0.0.2"))
    await bus.publish(received)
    bus.subscribe(Trigger("late", [{"exact": {"type": "message.received"}}], into("late")))
    await bus.publish(received)
    await bus.drain()
    assert seen == {
        "routed": ["message.routed"],
        "any": ["message.routed", "message.received", "message.received"],
        "prefix": ["message.received", "message.received"],
        "late": ["message.received"],
    }


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
    assert list(bus.dead_letters) == []


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


async def test_a_full_queue_drops_the_notice_and_keeps_the_bus_alive() -> None:
    """The queue is bounded: a burst beyond it is refused (the sweep re-emits), not held in RAM."""
    bus = InProcessBus(workers=1, queue_size=100)
    seen: list[str] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(event["id"])

    bus.subscribe(Trigger("all", [{"exact": {"type": "message.routed"}}], handler))
    for _ in range(150):  # not started yet: nothing is consumed while we publish
        await bus.publish(_routed("127.0.0.2"))
    bus.start()
    try:
        await bus.drain()
        assert len(seen) == 100
        await bus.publish(_routed("127.0.0.2"))
        await bus.drain()
        assert len(seen) == 101
    finally:
        await bus.stop()


async def test_only_the_newest_dead_letters_are_kept() -> None:
    bus = InProcessBus(workers=2, max_attempts=1, dead_letters_kept=3)

    async def broken(event: CloudEvent) -> None:
        raise RuntimeError(event["id"])

    bus.subscribe(Trigger("broken", [{"exact": {"type": "message.routed"}}], broken))
    bus.start()
    try:
        events = [_routed("127.0.0.2") for _ in range(5)]
        for event in events:
            await bus.publish(event)
        await bus.drain()
        assert len(bus.dead_letters) == 3
        assert {d.event["id"] for d in bus.dead_letters} <= {e["id"] for e in events}
    finally:
        await bus.stop()


async def test_a_batching_trigger_gets_the_pending_events_at_once_and_its_replies_go_out() -> None:
    bus = InProcessBus(workers=2, batch_max=8, batch_workers=1)
    batches: list[list[str]] = []
    singles: list[str] = []
    replied: list[str] = []

    async def one(event: CloudEvent) -> None:
        singles.append(event["id"])

    async def many(events: Sequence[CloudEvent]) -> list[CloudEvent]:
        batches.append([e["id"] for e in events])
        return [make_event(EventType.MESSAGE_VALIDATED, MessageEvent.model_validate(e.data)) for e in events]

    async def collect(event: CloudEvent) -> None:
        replied.append(event["msgid"])

    bus.subscribe(Trigger("intake", [{"exact": {"type": "message.received"}}], one, many))
    bus.subscribe(Trigger("next", [{"exact": {"type": "message.validated"}}], collect))
    sent = [MessageEvent(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4()) for _ in range(20)]
    for data in sent:  # not started yet: all 20 are pending when the batch worker starts
        await bus.publish(make_event(EventType.MESSAGE_RECEIVED, data))
    bus.start()
    try:
        await bus.drain()  # counts batched deliveries and the replies they published
        assert [len(b) for b in batches] == [8, 8, 4]  # bounded by batch_max, in arrival order
        assert singles == []
        assert sorted(replied) == sorted(str(d.message_id) for d in sent)
    finally:
        await bus.stop()


async def test_a_batch_that_fails_is_retried_event_by_event_so_one_bad_event_fails_alone() -> None:
    bus = InProcessBus(workers=2, max_attempts=2, backoff_base=0.01, backoff_cap=0.02, batch_workers=1)
    bad = _routed("127.0.0.9")
    good = [_routed("127.0.0.2") for _ in range(3)]
    handled: list[str] = []

    async def one(event: CloudEvent) -> None:
        if event["id"] == bad["id"]:
            raise ValueError("poison")
        handled.append(event["id"])

    async def many(events: Sequence[CloudEvent]) -> list[CloudEvent]:
        for event in events:
            await one(event)
        return []

    bus.subscribe(Trigger("batched", [{"exact": {"type": "message.routed"}}], one, many))
    for event in [good[0], bad, *good[1:]]:
        await bus.publish(event)
    bus.start()
    try:
        await wait_until(lambda: len(bus.dead_letters) == 1 and len(set(handled)) == 3)
        assert [d.event["id"] for d in bus.dead_letters] == [bad["id"]]
        assert set(handled) == {e["id"] for e in good}
    finally:
        await bus.stop()


async def test_a_batch_waits_up_to_batch_wait_for_more_events() -> None:
    bus = InProcessBus(workers=1, batch_max=10, batch_wait=5.0, batch_workers=1)
    batches: list[int] = []

    async def one(event: CloudEvent) -> None:
        batches.append(1)

    async def many(events: Sequence[CloudEvent]) -> list[CloudEvent]:
        batches.append(len(events))
        return []

    bus.subscribe(Trigger("batched", [{"exact": {"type": "message.routed"}}], one, many))
    bus.start()
    try:
        await bus.publish(_routed("127.0.0.2"))
        for _ in range(9):  # arrive one by one while the first waits: one full batch
            await asyncio.sleep(0)
            await bus.publish(_routed("127.0.0.2"))
        await bus.drain()
        assert batches == [10]
    finally:
        await bus.stop()
