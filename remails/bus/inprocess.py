"""The in-process broker: Knative Trigger semantics inside one asyncio process.

Each matching trigger gets its own delivery; a failing handler is retried with exponential
backoff up to `max_attempts`, then the event goes to the dead-letter log. A handler's reply
event is published back onto the bus, like a Knative Broker does with a 200 reply.
Delivery is at-least-once within the process; the database and the sweeper cover a crash,
and an event refused because the queue is full (a notice, not the truth) is re-emitted by the
sweep like a lost one.

A trigger with a batch handler gets the events pending for it at once (at most `batch_max`,
waiting at most `batch_wait` seconds for more after the first), from `batch_workers` tasks of
its own. When a batch fails, each of its events is retried alone through the single handler,
so one bad event cannot take its neighbours to the dead-letter log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cloudevents.http import CloudEvent

from remails import metrics
from remails.backoff import exponential_delay
from remails.bus import Trigger, matches, required_type
from remails.log import log_event

__all__ = ["DeadLetter", "InProcessBus"]

logger = logging.getLogger("remails.bus")


@dataclass(frozen=True)
class DeadLetter:
    trigger: str
    event: CloudEvent
    error: str


@dataclass
class _Delivery:
    trigger: Trigger
    event: CloudEvent
    attempt: int = 1
    single: bool = False  # through the single handler even when the trigger batches


@dataclass
class InProcessBus:
    workers: int = 32
    max_attempts: int = 5
    backoff_base: float = 0.05
    backoff_cap: float = 5.0
    queue_size: int = 100_000
    dead_letters_kept: int = 1000
    batch_max: int = 64
    batch_wait: float = 0.0
    batch_workers: int = 2
    dead_letters: deque[DeadLetter] = field(init=False)
    _triggers: list[Trigger] = field(default_factory=list)
    # Per event type, the triggers whose filters may match it (the others pin another type).
    _candidates: dict[str, list[Trigger]] = field(default_factory=dict)
    _queue: asyncio.Queue[_Delivery] = field(init=False)
    _batch_queues: dict[int, asyncio.Queue[_Delivery]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _timers: set[asyncio.TimerHandle] = field(default_factory=set)
    _unfinished: int = 0
    _idle: asyncio.Event = field(init=False)

    def __post_init__(self) -> None:
        self.dead_letters = deque(maxlen=self.dead_letters_kept)
        self._queue = asyncio.Queue(self.queue_size)
        self._idle = asyncio.Event()
        self._idle.set()

    def subscribe(self, trigger: Trigger) -> None:
        self._triggers.append(trigger)
        self._candidates.clear()
        if trigger.batch_handler is not None:
            queue: asyncio.Queue[_Delivery] = asyncio.Queue(self.queue_size)
            self._batch_queues[id(trigger)] = queue
            if self._tasks:  # subscribed after start
                self._start_batches(trigger, queue)

    async def publish(self, event: CloudEvent) -> None:
        attributes = event.get_attributes()
        kind = str(attributes.get("type"))
        candidates = self._candidates.get(kind)
        if candidates is None:
            candidates = self._candidates[kind] = [
                t for t in self._triggers if required_type(t.filters) in (None, kind)
            ]
        for trigger in candidates:
            if matches(trigger.filters, attributes):
                self._enqueue(_Delivery(trigger, event))

    def _enqueue(self, delivery: _Delivery) -> None:
        queue = self._queue
        if delivery.trigger.batch_handler is not None and not delivery.single:
            queue = self._batch_queues[id(delivery.trigger)]
        try:
            queue.put_nowait(delivery)
            self._unfinished += 1
            self._idle.clear()
        except asyncio.QueueFull:
            log_event(
                logger,
                "event dropped: bus queue full",
                logging.ERROR,
                trigger=delivery.trigger.name,
                event_type=delivery.event["type"],
                event_id=delivery.event["id"],
            )

    def _done(self, count: int = 1) -> None:
        self._unfinished -= count
        if self._unfinished == 0:
            self._idle.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        for trigger in self._triggers:
            queue = self._batch_queues.get(id(trigger))
            if queue is not None:
                self._start_batches(trigger, queue)

    def _start_batches(self, trigger: Trigger, queue: asyncio.Queue[_Delivery]) -> None:
        self._tasks += [
            asyncio.create_task(self._work_batches(trigger, queue)) for _ in range(self.batch_workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def drain(self) -> None:
        """Wait until every queued delivery has been handled (retries pending excluded)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            finally:
                self._queue.task_done()
                self._done()

    async def _work_batches(self, trigger: Trigger, queue: asyncio.Queue[_Delivery]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.batch_wait
            while len(batch) < self.batch_max:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            try:
                await self._deliver_batch(trigger, batch)
            finally:
                for _ in batch:
                    queue.task_done()
                self._done(len(batch))

    async def _deliver_batch(self, trigger: Trigger, batch: Sequence[_Delivery]) -> None:
        if trigger.batch_handler is None:
            raise TypeError(f"trigger {trigger.name} has no batch handler")
        try:
            replies = await trigger.batch_handler([d.event for d in batch])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for delivery in batch:
                self._failed(replace(delivery, single=True), exc)
            return
        for reply in replies:
            await self.publish(reply)

    async def _deliver(self, delivery: _Delivery) -> None:
        try:
            reply = await delivery.trigger.handler(delivery.event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(delivery, exc)
            return
        if reply is not None:
            await self.publish(reply)

    def _failed(self, delivery: _Delivery, exc: Exception) -> None:
        event = delivery.event
        fields = {
            "trigger": delivery.trigger.name,
            "event_type": event["type"],
            "event_id": event["id"],
            "attempt": delivery.attempt,
            "error": f"{type(exc).__name__}: {exc}",
        }
        if delivery.attempt >= self.max_attempts:
            self.dead_letters.append(DeadLetter(delivery.trigger.name, event, fields["error"]))
            log_event(logger, "event dead-lettered", logging.ERROR, **fields)
            metrics.DEAD_LETTERS.inc()
            return
        log_event(logger, "event delivery failed, retrying", logging.WARNING, **fields)
        delay = exponential_delay(
            delivery.attempt,
            base=self.backoff_base,
            cap=self.backoff_cap,
            jitter=random.uniform(-1, 1),
        )
        retry = replace(delivery, attempt=delivery.attempt + 1)

        def requeue() -> None:
            self._timers.discard(timer)
            self._enqueue(retry)

        timer = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(timer)
