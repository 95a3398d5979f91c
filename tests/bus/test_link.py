"""The link between the front and the sender process, over a real Unix socket: events both
ways, kept while the peer is away and delivered once it (re)connects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
from cloudevents.http import CloudEvent

from remails.bus.link import LinkEnd, connect_link, decode_event, encode_event, serve_link
from remails.events import EventType, MessageRouted, make_event
from tests.support.wait import wait_until


def _routed(ip: str = "127.0.0.2") -> CloudEvent:
    return make_event(
        EventType.MESSAGE_ROUTED,
        MessageRouted(message_id=uuid4(), organization_id=uuid4(), project_id=uuid4(), outbound_ip=ip),
    )


def test_an_event_line_keeps_its_id_time_extensions_and_data() -> None:
    event = _routed()
    line = encode_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    again = decode_event(line)
    assert dict(again.get_attributes()) == dict(event.get_attributes())
    assert again.data == event.data


def test_a_line_that_is_not_an_event_is_refused() -> None:
    for line in (b"[1, 2]\n", b'{"d": {}}\n', b"not json\n", b'{"a": {"id": "1"}, "d": null}\n'):
        with pytest.raises(ValueError):
            decode_event(line)


class _Ends:
    def __init__(self) -> None:
        self.front_got: list[CloudEvent] = []
        self.sender_got: list[CloudEvent] = []
        self.front = LinkEnd(self._to_front)
        self.sender = LinkEnd(self._to_sender)

    async def _to_front(self, event: CloudEvent) -> None:
        self.front_got.append(event)

    async def _to_sender(self, event: CloudEvent) -> None:
        self.sender_got.append(event)


@pytest.fixture
async def ends(tmp_path: Path) -> AsyncIterator[tuple[_Ends, str]]:
    yield _Ends(), str(tmp_path / "sender.sock")


async def test_events_go_both_ways_and_those_sent_before_the_peer_came_wait_for_it(
    ends: tuple[_Ends, str],
) -> None:
    e, path = ends
    early = [_routed() for _ in range(3)]
    for event in early:
        await e.front.publish(event)  # no sender yet
    server = await serve_link(path, e.front)
    stop = asyncio.Event()
    connecting = asyncio.create_task(connect_link(path, e.sender, stop))
    try:
        await wait_until(lambda: len(e.sender_got) == 3)
        assert [x["id"] for x in e.sender_got] == [x["id"] for x in early]  # in order
        reply = _routed("127.0.0.3")
        await e.sender.publish(reply)
        await wait_until(lambda: len(e.front_got) == 1)
        assert e.front_got[0]["id"] == reply["id"] and e.front_got[0].data == reply.data
    finally:
        stop.set()
        await e.sender.close()
        await e.front.close()
        server.close()
        await connecting


async def test_when_the_front_restarts_the_sender_reconnects_and_its_backlog_follows(
    ends: tuple[_Ends, str],
) -> None:
    e, path = ends
    server = await serve_link(path, e.front)
    stop = asyncio.Event()
    connecting = asyncio.create_task(connect_link(path, e.sender, stop, retry_seconds=0.02))
    try:
        await wait_until(lambda: e.front.connected.is_set() and e.sender.connected.is_set())
        server.close()
        await e.front.close()  # the front goes away: the sender's end sees the link break
        await wait_until(lambda: not e.sender.connected.is_set())
        while_away = [_routed() for _ in range(5)]
        for event in while_away:
            await e.sender.publish(event)
        front_again = _Ends()  # a new front process, listening on the same path
        server = await serve_link(path, front_again.front)
        await wait_until(lambda: len(front_again.front_got) == 5)
        assert [x["id"] for x in front_again.front_got] == [x["id"] for x in while_away]
        assert e.front_got == []  # nothing went to the old front after it closed
    finally:
        stop.set()
        await e.sender.close()
        server.close()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting


async def test_the_backlog_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    got: list[CloudEvent] = []

    async def deliver(event: CloudEvent) -> None:
        got.append(event)

    front = LinkEnd(deliver, backlog_max=4)
    events = [_routed() for _ in range(10)]
    for event in events:
        await front.publish(event)
    sender = LinkEnd(deliver)
    path = str(tmp_path / "s.sock")
    server = await serve_link(path, sender)  # here the sender listens; either side may
    stop = asyncio.Event()
    connecting = asyncio.create_task(connect_link(path, front, stop))
    try:
        await wait_until(lambda: len(got) == 4)
        assert [x["id"] for x in got] == [x["id"] for x in events[-4:]]
    finally:
        stop.set()
        await front.close()
        await sender.close()
        server.close()
        await connecting
