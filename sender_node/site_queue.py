"""Ready queues, one per (egress IP, destination site): a destination over its site's limits
waits here, in order, instead of being deferred.

A destination asks its queue for a *ticket*: one delivery's share of the rate budget and a
connection — an idle one to one of the site's MX addresses, or a slot to open a new one. Slots
are rows in the database (`remails.db.shaping`) held for a connection's whole life, so
`max_connections` holds across every process sharing the IP; the rate budget is taken from
the database in chunks. Under every limit a ticket costs no database round trip, except one
per new connection and one per budget chunk.

The wait is bounded by the queue's length and a maximum wait; a destination past either gets
`ShapingRefused` and is recorded as a temporary failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiosmtplib

from remails.db import Pool
from remails.db import shaping as store
from remails.log import log_event
from remails_sender_node.connections import CachedConnection, PathKey, Slot
from remails_sender_node.shaping import Limits, Throttle, take_budget, throttle_site

__all__ = ["ReadyQueue", "Shaper", "ShapingRefused", "Ticket", "Want"]

logger = logging.getLogger("remails.sender.shaping")

MAX_CONNECTION_AGE = 300.0  # seconds: even a busy connection is replaced after this
POLL_SECONDS = 0.2  # how often the head of a queue asks again for a slot other processes hold
YIELD_SECONDS = 2.0  # after giving a slot back to a waiting process, none is taken for this long


class ShapingRefused(Exception):
    """The destination may not wait (longer) in its ready queue: the queue is full or the
    wait ran out. The text names the site and the reason."""


@dataclass(frozen=True)
class Want:
    """What a destination can use: connections to these MX paths, verified TLS or not."""

    paths: frozenset[PathKey]
    verified: bool


@dataclass
class Ticket:
    """The right to one delivery now; `connection` is an idle one to reuse (None: open one on
    the slot). `waited`/`why`: how long it waited in the queue and for what."""

    slot: Slot
    connection: CachedConnection | None
    waited: float = 0.0
    why: str | None = None


@dataclass(eq=False)
class _Waiter:
    want: Want
    future: asyncio.Future[Ticket]
    why: str | None = None
    tenant: str = ""


class FairLine:
    """The waiters of one ready queue: first come first served within a tenant, tenants in
    turn, so one organization's burst to a site never holds back another's next message (the
    fairness of KumoMTA's per-tenant scheduled queues, kept inside the ready queue)."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, whose turn is next first
        self._count = 0
        self.last: _Waiter | None = None  # the most recent to join

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[_Waiter]:
        return (w for line in self._by_tenant.values() for w in line)

    def count(self, tenant: str) -> int:
        line = self._by_tenant.get(tenant)
        return 0 if line is None else len(line)

    def append(self, waiter: _Waiter) -> None:
        line = self._by_tenant.get(waiter.tenant)
        if line is None:
            line = self._by_tenant[waiter.tenant] = deque()
            self._turns.append(waiter.tenant)
        line.append(waiter)
        self._count += 1
        self.last = waiter

    def head(self) -> _Waiter | None:
        """The first waiter of the tenant whose turn it is."""
        return self._by_tenant[self._turns[0]][0] if self._turns else None

    def served(self, waiter: _Waiter) -> None:
        """`waiter` is served or gone; when it was the head, its tenant's turn passes to the
        next tenant. (It may have left the line already, while the head was being served.)"""
        if self.head() is not waiter:
            self.remove(waiter)
            return
        tenant = self._turns.popleft()
        line = self._by_tenant[tenant]
        line.popleft()
        self._count -= 1
        if line:
            self._turns.append(tenant)
        else:
            del self._by_tenant[tenant]

    def remove(self, waiter: _Waiter) -> None:
        line = self._by_tenant.get(waiter.tenant)
        if line is None or waiter not in line:
            return
        line.remove(waiter)
        self._count -= 1
        if not line:
            del self._by_tenant[waiter.tenant]
            self._turns.remove(waiter.tenant)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


@dataclass
class ReadyQueue:
    shaper: Shaper
    source_ip: str
    site: str
    limits: Limits
    idle: list[CachedConnection] = field(default_factory=list)
    held: int = 0  # slots this process holds: busy and idle connections, and closing ones
    give_back: int = 0  # slots to give back at the next releases: another process waits for one
    yielded_until: float = 0.0  # monotonic: no slot taken from the database before, one was given back
    budget: int = 0
    window_end: float = 0.0  # epoch
    suspended_until: float = 0.0  # epoch
    factor: float = 1.0
    waiters: FairLine = field(default_factory=FairLine)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pump: asyncio.Task[None] | None = None

    # -- asking ------------------------------------------------------------------------------------

    async def acquire(
        self,
        want: Want,
        renew: Callable[[], Awaitable[object]] | None = None,
        renew_every: float = 60.0,
        tenant: str = "",
    ) -> Ticket:
        """A ticket at once when the queue is empty and the limits allow; else wait in line
        (in turn with the other tenants waiting), calling `renew` (the message's lease) every
        `renew_every` seconds while waiting. The line's bound is per tenant, so one tenant
        filling it refuses nobody else."""
        started = time.monotonic()
        last = self.waiters.last if self.waiters else None
        why = (last.why if last is not None else None) or "a connection"  # as those ahead
        if not self.waiters:
            async with self._lock:
                ticket, why = await self._try(want)
            if ticket is not None:
                return ticket
        if self.waiters.count(tenant) >= self.shaper.queue_max:
            raise ShapingRefused(
                f"the ready queue for site {self.site} from {self.source_ip} is full"
                f" ({self.waiters.count(tenant)} of this organization's destinations waiting)"
            )
        waiter = _Waiter(want, asyncio.get_running_loop().create_future(), why, tenant)
        self.waiters.append(waiter)
        self._kick()
        deadline = started + self.shaper.max_wait
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ShapingRefused(
                        f"waited {self.shaper.max_wait:g} s in the ready queue for site {self.site}"
                        f" from {self.source_ip} for {waiter.why}"
                    )
                await asyncio.wait({waiter.future}, timeout=min(remaining, renew_every))
                if waiter.future.done():
                    ticket = waiter.future.result()
                    ticket.waited, ticket.why = time.monotonic() - started, waiter.why
                    return ticket
                if renew is not None:
                    await renew()
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # granted as we gave up: pass it on
            else:
                waiter.future.cancel()
            self.waiters.remove(waiter)
            raise

    def _kick(self) -> None:
        self._changed.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        """Hand tickets to the waiters in order as the limits allow."""
        while (head := self.waiters.head()) is not None:
            if head.future.done():
                self.waiters.served(head)
                continue
            self._changed.clear()
            try:
                async with self._lock:
                    ticket, why = await self._try(head.want)
            except Exception as exc:  # the database failed: ask again shortly
                log_event(logger, "shaping state unavailable", logging.WARNING, error=type(exc).__name__)
                ticket, why = None, "the shaping state (database unavailable)"
            if ticket is not None:
                self.waiters.served(head)
                if head.future.done():
                    self.release(ticket)
                else:
                    head.future.set_result(ticket)
                continue
            head.why = why
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._retry_after(why))

    def _retry_after(self, why: str) -> float:
        now = time.time()
        if self.suspended_until > now:
            return self.suspended_until - now + 0.01
        if why == "the rate limit":
            return max(0.01, self.window_end - now + 0.01)
        if why.endswith("held by other processes)") or why.startswith("the shaping state"):
            return POLL_SECONDS
        return 1.0  # a local connection coming back wakes us before this

    async def _try(self, want: Want) -> tuple[Ticket | None, str]:
        """A ticket now, or None and what is missing. Called under the lock."""
        now = time.time()
        if self.suspended_until > now:
            return None, f"suspended until {_clock(self.suspended_until)}"
        if self.budget <= 0 or now >= self.window_end:
            await self._refill()
            if self.suspended_until > time.time():
                return None, f"suspended until {_clock(self.suspended_until)}"
            if self.budget <= 0:
                return None, "the rate limit"
        connection = self._take_idle(want)
        if connection is not None:
            self.budget -= 1
            return Ticket(self._slot_of(connection), connection), ""
        why = "a connection"
        if self.held < self.limits.max_connections and time.monotonic() >= self.yielded_until:
            slot = await self.shaper.acquire_slot(self)
            if slot is not None:
                self.held += 1
                self.budget -= 1
                return Ticket(slot, None), ""
            why = "a connection (all held by other processes)"
        if self.idle:  # idle ones this destination cannot use: close one, open the right one
            unusable = self.idle.pop(0)
            await self.shaper.quit(unusable)  # closed before its slot opens another
            self.budget -= 1
            return Ticket(self._slot_of(unusable), None), ""
        return None, why

    @staticmethod
    def _slot_of(connection: CachedConnection) -> Slot:
        slot, connection.slot = connection.slot, None
        if slot is None:
            raise LookupError("an idle connection without its slot")
        return slot

    def _take_idle(self, want: Want) -> CachedConnection | None:
        now = time.monotonic()
        for c in list(self.idle):
            if not self._fresh(c, now):
                self.idle.remove(c)
                self._close(c, self._slot_of(c))
        for i in range(len(self.idle) - 1, -1, -1):  # the most recently used first
            c = self.idle[i]
            if c.path in want.paths and c.verified == want.verified:
                del self.idle[i]
                return c
        return None

    def _fresh(self, c: CachedConnection, now: float) -> bool:
        return (
            c.client.is_connected
            and now - c.idle_since < self.limits.idle_seconds
            and now - c.opened_at < MAX_CONNECTION_AGE
            and c.messages < self.limits.max_messages_per_connection
        )

    async def _refill(self) -> None:
        limits, window, throttle = self.limits, self.shaper.window, self.shaper.throttle
        take = await store.update_site(
            self.shaper.pool,
            self.source_ip,
            self.site,
            lambda state: take_budget(state, limits, window, throttle),
        )
        self.budget, self.window_end, self.factor = take.granted, take.window_end, take.factor
        # Never shortened: a throttle seen here may not be stored yet when this read was made.
        self.suspended_until = max(self.suspended_until, take.suspended_until)
        if self.suspended_until > time.time():
            self.budget = 0

    # -- giving back --------------------------------------------------------------------------------

    def release(self, ticket: Ticket, *, reusable: bool = True) -> None:
        """After the delivery: the connection back to the idle ones, or closed (after its
        last message, a throttling reply, or when it died) and its slot given back."""
        connection, now = ticket.connection, time.monotonic()
        ticket.connection = None
        if connection is not None:
            connection.idle_since = now
        if self.give_back > 0:
            self.give_back -= 1
            reusable = False
            # Long enough for the waiting process (it asks every POLL_SECONDS) to take it.
            self.yielded_until = now + YIELD_SECONDS
        if connection is not None and reusable and self._fresh(connection, now):
            connection.slot = ticket.slot
            self.idle.append(connection)
            self._changed.set()
        else:
            self._close(connection, ticket.slot)

    def _close(self, connection: CachedConnection | None, slot: Slot) -> None:
        """QUIT in the background, then the slot back to the database — so the site never sees
        more than `max_connections` at once, and every connection's end gives the other
        processes sharing the IP their chance at the slot."""

        async def closing() -> None:
            try:
                if connection is not None:
                    await self.shaper.quit(connection)
                await self.shaper.release_slot(self, slot)
            except Exception as exc:  # a slot not given back expires: then it is no longer counted
                log_event(logger, "slot not given back", logging.WARNING, error=type(exc).__name__)
            finally:
                self.held -= 1
                self._changed.set()

        self.shaper.background(closing())

    async def throttled(self, note: str) -> float:
        """A throttling reply from this site: suspend this (IP, site) everywhere and lower its
        rate; returns the end of the suspension (epoch)."""
        window, throttle = self.shaper.window, self.shaper.throttle
        after = await store.update_site(
            self.shaper.pool,
            self.source_ip,
            self.site,
            lambda state: throttle_site(state, window, throttle),
            throttle_note=note,
        )
        self.suspend(after.suspended_until)
        self.factor = after.factor
        log_event(
            logger,
            "site suspended",
            logging.WARNING,
            site=self.site,
            egress_source=self.source_ip,
            until=_clock(after.suspended_until),
            rate_factor=round(after.factor, 3),
        )
        return after.suspended_until

    def suspend(self, until: float) -> None:
        if until > self.suspended_until:
            self.suspended_until = until
            self.budget = 0  # what was taken before the suspension is not used after it
            self._changed.set()

    async def sweep(self, everything: bool = False) -> None:
        """Close the idle connections past the site's idle time (all of them when stopping, or
        when another process waits for a slot)."""
        now = time.monotonic()
        for c in list(self.idle):
            if everything or not self._fresh(c, now):
                self.idle.remove(c)
                self._close(c, self._slot_of(c))


class Shaper:
    """This node's ready queues and the shared state behind them."""

    def __init__(
        self,
        pool: Pool,
        node: str,
        *,
        window: float,
        throttle: Throttle,
        queue_max: int,
        max_wait: float,
        slot_seconds: float,
    ) -> None:
        self.pool = pool
        self.node = node
        self.window = window
        self.throttle = throttle
        self.queue_max = queue_max
        self.max_wait = max_wait
        self.slot_seconds = slot_seconds
        self.queues: dict[tuple[str, str], ReadyQueue] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def queue(self, source_ip: str, site: str, limits: Limits) -> ReadyQueue:
        queue = self.queues.get((source_ip, site))
        if queue is None:
            queue = self.queues[(source_ip, site)] = ReadyQueue(self, source_ip, site, limits)
        else:
            queue.limits = limits  # the same site may have been named by another destination
        return queue

    async def acquire_slot(self, queue: ReadyQueue) -> Slot | None:
        token = uuid.uuid4()
        number = await store.acquire_slot(
            self.pool,
            queue.source_ip,
            queue.site,
            queue.limits.max_connections,
            self.node,
            token,
            self.slot_seconds,
        )
        if number is None:  # held elsewhere: ask the holders to give back their idle ones
            await store.want_slot(self.pool, queue.source_ip, queue.site, queue.held)
            return None
        return Slot(number, token)

    async def release_slot(self, queue: ReadyQueue, slot: Slot) -> None:
        await store.release_slot(self.pool, queue.source_ip, queue.site, slot.number, slot.token)

    def background(self, work: Coroutine[None, None, None]) -> None:
        """Closing work the delivery that ends a connection need not wait for."""
        task = asyncio.create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def quit(self, connection: CachedConnection) -> None:
        if connection.client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await connection.client.quit(timeout=2)
        connection.client.close()

    async def start(self) -> None:
        await store.release_node_slots(self.pool, self.node)

    async def housekeeping(self) -> None:
        """Often (every second): idle connections past their site's idle time, and those of
        sites another process waits for a slot of (an idle connection is no reason to make
        another process wait). A site busy here too gives back one slot a second while a
        process waiting for one holds at least two fewer: slots move to where the waiting is,
        or a process that took few would queue until its line runs past the longest wait."""
        idle = [key for key, q in self.queues.items() if q.idle and not q.waiters]
        busy = [key for key, q in self.queues.items() if q.waiters and q.held > 1]
        asked = idle + busy
        wanted = await store.wanted(self.pool, asked) if asked else {}
        for key in busy:
            if key in wanted and self.queues[key].held > wanted[key] + 1:
                self.queues[key].give_back = 1
        for key, queue in list(self.queues.items()):
            await queue.sweep(everything=key in wanted and key in idle)
            unused = not (queue.waiters or queue.idle or queue.held)
            if unused and queue.suspended_until < time.time():  # a suspension is remembered
                del self.queues[(queue.source_ip, queue.site)]

    async def heartbeat(self, ips: list[str]) -> None:
        """With the node's heartbeat: keep this node's slots and learn of suspensions other
        processes recorded."""
        await store.renew_slots(self.pool, self.node, self.slot_seconds)
        if not self.queues:
            return
        for (ip, site), until in (await store.suspensions(self.pool, ips)).items():
            queue = self.queues.get((ip, site))
            if queue is not None:
                queue.suspend(until)

    async def stop(self) -> None:
        for queue in list(self.queues.values()):
            for waiter in queue.waiters:
                waiter.future.cancel()
            if queue._pump is not None:
                queue._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queue._pump
            with contextlib.suppress(Exception):  # the database may be gone already
                await queue.sweep(everything=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        with contextlib.suppress(Exception):
            await store.release_node_slots(self.pool, self.node)
