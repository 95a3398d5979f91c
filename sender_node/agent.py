"""The sender node: owns this node's egress sources (outbound IPs), takes the routed messages
for them, signs, delivers to each destination's MX and records what happened.

message.routed (outboundip = one of ours) → delivery.attempted

Each claimed message is delivered in a task of its own (the event handler returns at once), so
destinations waiting in their site's ready queue (`site_queue`, limits from `shaping`) never
hold the bus's workers; delivery.attempted is published when the message is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from cloudevents.http import CloudEvent

from remails import metrics
from remails.addresses import ascii_domain
from remails.attempt_decision import apply_decisions
from remails.batching import Batcher, BatchFailed
from remails.bus import Trigger
from remails.context import Context
from remails.db import egress, pipeline
from remails.db.messages import is_data_error
from remails.dns import make_resolver
from remails.events import (
    DeliveryAttempted,
    EventType,
    MessageEvent,
    MessageRouted,
    event_data,
    make_event,
)
from remails.log import log_event
from remails.message_headers import normalise_line_endings
from remails.outcomes import RecipientResult, RetryPolicy, classify
from remails.return_path import KEY_PURPOSE, envelope_senders
from remails_sender_node.dkim_signer import DkimSigner, SignerSet
from remails_sender_node.egress_ips import bindable
from remails_sender_node.mta_sts import MtaSts, Policy, allowed_hosts
from remails_sender_node.mx import DeliveryDnsError, DestinationCache, MxHost, resolve_destination
from remails_sender_node.payload import Payload
from remails_sender_node.shaping import Limits, is_throttling, limits_for, load_shaping, site_name
from remails_sender_node.signing_process import SigningProcess
from remails_sender_node.site_queue import Shaper, ShapingRefused, Want
from remails_sender_node.smtp_client import Envelope, TlsPolicy, contained, deliver, failed_attempt

__all__ = ["SenderNode"]

logger = logging.getLogger("remails.sender")

PARKED_PER_ORGANIZATION = 10_000  # routed messages an organization at its share may have waiting here
SIGNER_CACHE_SIZE = 1000  # parsed keys kept; past this the cache starts over
SITE_LIMITS_KEPT = 10_000  # sites whose limits are remembered; past this it starts over
HOUSEKEEPING_SECONDS = 1.0  # idle connections closed and spare slots given back this often
DECISIONS_PER_STATEMENT = 64  # attempts decided together at most (a statement's arrays stay small)
POLICY_WAIT_NOTED = 0.5  # seconds: an MTA-STS lookup at least this slow is named in the attempt log


class SenderNode:
    def __init__(self, ctx: Context, *, decides: bool = False) -> None:
        """`decides`: the node decides each attempt's outcome itself (the retry function shares
        its process); otherwise it publishes delivery.attempted for the retry function."""
        self.ctx = ctx
        self.decides = decides
        self.settings = ctx.settings
        self.name = ctx.settings.effective_node_name
        configured = list(ctx.settings.outbound_ips)
        self.ips = bindable(configured) if ctx.settings.outbound_ips_discover else configured
        self.resolver = make_resolver(ctx.settings, cache=True)
        self.destinations = DestinationCache()
        ca_file = ctx.settings.tls_ca_file
        self.tls = TlsPolicy(require_verified=ctx.settings.require_verified_tls, ca_file=ca_file)
        # MTA-STS: verified TLS, with connections of its own (never an unverified cached one).
        self.tls_verified = TlsPolicy(require_verified=True, ca_file=ca_file)
        self.mta_sts = (
            MtaSts(
                self.resolver,
                ca_file,
                port=ctx.settings.mta_sts_port,
                timeout=ctx.settings.smtp_client_timeout_seconds,
            )
            if ctx.settings.mta_sts
            else None
        )
        self.rng = random.Random()
        self._return_path_key = ctx.master_key.derive(KEY_PURPOSE)  # derived once, not per message
        self._signers: dict[tuple[UUID, str, tuple[tuple[str, bytes], ...]], DkimSigner | SignerSet] = {}
        self.signing = SigningProcess() if ctx.settings.dkim_signing_process else None
        # Attempts that end at about the same time are decided in one statement.
        self._decisions = Batcher(self._apply_decisions, DECISIONS_PER_STATEMENT, is_own_fault=is_data_error)
        self._heartbeat: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        # The lease outlives the longest attempt: every MX step may take the full timeout.
        self.lease_seconds = max(
            self.settings.stuck_after_seconds, 8 * self.settings.smtp_client_timeout_seconds
        )
        s = ctx.settings
        defaults = Limits(
            max_connections=s.shaping_max_connections,
            max_messages_per_connection=s.shaping_max_messages_per_connection,
            max_deliveries_per_minute=s.shaping_max_deliveries_per_minute,
            idle_seconds=s.shaping_idle_seconds,
        )
        self.shaping = load_shaping(defaults, s.shaping_file)  # a bad file stops the start
        self._site_limits: dict[str, Limits] = {}  # a site's limits depend on its name alone
        self.shaper = Shaper(
            ctx.pipeline,
            self.name,
            window=s.shaping_window_seconds,
            throttle=self.shaping.throttle,
            queue_max=s.shaping_queue_max,
            max_wait=s.shaping_max_wait_seconds,
            # Renewed by every heartbeat; a crashed process's slots free themselves after this.
            slot_seconds=max(30.0, 4 * s.heartbeat_seconds),
        )
        # Messages claimed and not yet finished: waiting in ready queues must not hold the
        # bus's workers, so each is delivered in a task of its own, at most this many at once.
        self._in_flight = asyncio.Semaphore(s.sender_max_in_flight)
        self._sending: set[asyncio.Task[None]] = set()
        self._in_flight_by_organization: Counter[UUID] = Counter()
        # Routed messages of an organization at its share, taken as its own finish (bounded; the
        # sweep routes the rest again), and the claims started for them.
        self._parked: defaultdict[UUID, deque[MessageRouted]] = defaultdict(deque)
        self._claiming: set[asyncio.Task[None]] = set()
        self._stopping = False

    def triggers(self) -> list[Trigger]:
        """One trigger per egress source, like one Knative Trigger per IP pointing at this node."""
        return [
            Trigger(
                f"sender-{self.name}-{ip}",
                [{"exact": {"type": EventType.MESSAGE_ROUTED.value, "outboundip": ip}}],
                self.handle_routed,
                self.handle_routed_batch,
            )
            for ip in self.ips
        ]

    async def start(self) -> None:
        await egress.register_node(self.ctx.pipeline, self.name, self.ips, self.settings.node_url)
        await self.shaper.start()  # connection slots of an earlier run of this node are free
        if self.signing is not None:
            await self.signing.start()
        # Whatever this node was sending before a restart is not being sent now.
        for key in await pipeline.release_node_leases(self.ctx.pipeline, self.name):
            data = MessageEvent(
                message_id=key.id, organization_id=key.organization_id, project_id=key.project_id
            )
            await self.ctx.publisher.publish(make_event(EventType.MESSAGE_ADMITTED, data))
        self._heartbeat = asyncio.create_task(self._beat())
        self._housekeeping = asyncio.create_task(self._keep_house())
        log_event(logger, "sender node started", node=self.name, egress_sources=self.ips)

    async def stop(self) -> None:
        self._stopping = True  # messages finishing now take no parked ones
        for task in (self._heartbeat, self._housekeeping, *self._claiming, *self._sending):
            if task is not None:
                task.cancel()  # an unfinished message's lease runs out; the sweep re-drives it
        for task in (self._heartbeat, self._housekeeping, *self._claiming, *self._sending):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.shaper.stop()
        if self.signing is not None:
            await self.signing.stop()
        if self.mta_sts is not None:
            await self.mta_sts.close()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            if self.settings.outbound_ips_discover:  # a floating IP may have moved here or away
                self.ips = bindable(list(self.settings.outbound_ips))
            try:
                stale = self.settings.heartbeat_seconds * 3
                await egress.heartbeat(self.ctx.pipeline, self.name, self.ips, stale)
                await self.shaper.heartbeat(self.ips)
            except Exception as exc:  # a missed beat only delays routing to us
                log_event(logger, "heartbeat failed", logging.WARNING, error=type(exc).__name__)

    async def _keep_house(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.shaper.housekeeping()
            except Exception as exc:  # a slot not given back now is given back next time
                log_event(logger, "shaping housekeeping failed", logging.WARNING, error=type(exc).__name__)

    def _signer(self, claimed: pipeline.Claimed) -> DkimSigner | SignerSet | None:
        """The signer of the sender's most specific registered domain, from the keys the claim
        read: its RSA key, and its Ed25519 key beside it when it has one. Only the parsed keys
        are kept, under digests of the sealed keys themselves (a rotated key is a new entry)."""
        domain = claimed.dkim_domain
        if domain is None or not claimed.dkim_keys:
            return None
        org_id = claimed.key.organization_id
        digests = tuple((selector, hashlib.sha256(sealed).digest()) for selector, sealed in claimed.dkim_keys)
        cache_key = (org_id, domain, digests)
        signer = self._signers.get(cache_key)
        if signer is None:
            signers = [
                DkimSigner(domain, selector, self.ctx.master_key.open(sealed, context=domain))
                for selector, sealed in claimed.dkim_keys
            ]
            signer = signers[0] if len(signers) == 1 else SignerSet(signers)
            if len(self._signers) >= SIGNER_CACHE_SIZE:
                self._signers.clear()
            self._signers[cache_key] = signer
        return signer

    async def handle_routed(self, event: CloudEvent) -> CloudEvent | None:
        await self.handle_routed_batch([event])
        return None  # delivery.attempted (or the outcome) is published when the message is done

    async def handle_routed_batch(self, events: Sequence[CloudEvent]) -> list[CloudEvent]:
        """Take the routed messages of `events` that this node may send now — one statement
        claims them all — and deliver each in a task of its own."""
        by_ip: dict[str, list[MessageRouted]] = defaultdict(list)
        for event in events:
            data = event_data(event, MessageRouted)
            if data.outbound_ip in self.ips:
                by_ip[data.outbound_ip].append(data)
        for ip, routed in by_ip.items():
            await self._claim_and_send(ip, routed)
        return []

    async def _claim_and_send(self, outbound_ip: str, routed: list[MessageRouted]) -> None:
        taking: list[MessageRouted] = []
        held = self._in_flight_by_organization
        try:
            for data in routed:
                organization = data.organization_id
                if held[organization] >= self.settings.sender_max_in_flight_per_organization:
                    # This organization holds its share of the node, so its burst never takes
                    # every slot: the message waits (still routed) until one of its own is done.
                    self._park(data)
                    continue
                if taking and self._in_flight.locked():
                    # Never wait for a slot while holding some: batches waiting on each other's
                    # slots would never send again. Those taken go first.
                    batch, taking = taking, []
                    await self._claim_taken(outbound_ip, batch)
                held[organization] += 1  # reserved before any wait, so concurrent events count
                try:
                    await self._in_flight.acquire()  # the only wait: this node holds its maximum
                except BaseException:
                    self._unreserve(organization)
                    raise
                taking.append(data)
        except BaseException:
            for data in taking:
                self._released(data.organization_id)
            raise
        await self._claim_taken(outbound_ip, taking)

    async def _claim_taken(self, outbound_ip: str, taking: list[MessageRouted]) -> None:
        """Claim the messages holding a slot and start each claimed one; the slots of the
        others (of all, when the claim fails) are given back."""
        if not taking:
            return
        try:
            claimed = await pipeline.claim_many_for_sending(
                self.ctx.pipeline, [d.message_id for d in taking], outbound_ip, self.name, self.lease_seconds
            )
        except BaseException:
            for data in taking:
                self._released(data.organization_id)
            raise
        by_id = {c.key.id: c for c in claimed}
        for data in taking:
            one = by_id.pop(data.message_id, None)
            if one is None:  # a duplicate event, another node took it, or held (blocked)
                self._released(data.organization_id)
                continue
            task = asyncio.create_task(self._send(one, outbound_ip))
            self._sending.add(task)
            task.add_done_callback(functools.partial(self._sent, data.organization_id))

    def _released(self, organization: UUID) -> None:
        self._in_flight.release()
        self._unreserve(organization)

    def _unreserve(self, organization: UUID) -> None:
        self._in_flight_by_organization[organization] -= 1
        if self._in_flight_by_organization[organization] <= 0:
            del self._in_flight_by_organization[organization]

    def _park(self, data: MessageRouted) -> None:
        parked = self._parked[data.organization_id]
        if len(parked) < PARKED_PER_ORGANIZATION:  # past it, the sweep routes it again later
            parked.append(data)

    def _unpark(self, organization: UUID) -> None:
        """One of the organization's messages is done: take its next waiting one, if any."""
        parked = self._parked.get(organization)
        if not parked or self._stopping:
            return
        data = parked.popleft()
        if not parked:
            del self._parked[organization]
        task = asyncio.create_task(self._take_parked(data))
        self._claiming.add(task)
        task.add_done_callback(self._claiming.discard)

    async def _take_parked(self, data: MessageRouted) -> None:
        try:
            await self._claim_and_send(data.outbound_ip, [data])
        except Exception as exc:  # still routed: the sweep routes it again
            log_event(
                logger, "claim failed", logging.WARNING, message_id=data.message_id, error=type(exc).__name__
            )

    def _sent(self, organization: UUID, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._released(organization)
        self._unpark(organization)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The database failed us: the lease runs out and the sweep re-drives the message.
            error = exc.cause if isinstance(exc, BatchFailed) else type(exc).__name__
            log_event(logger, "sending failed", logging.ERROR, error=error)

    async def _send(self, claimed: pipeline.Claimed, outbound_ip: str) -> None:
        message = claimed.key
        by_domain: dict[str, list[str]] = defaultdict(list)
        for address, domain in claimed.recipients:
            by_domain[domain].append(address)
        try:
            signer = self._signer(claimed)
            sign = self.signing.sign if self.signing is not None else None
            ready = Payload(normalise_line_endings(claimed.raw), signer, sign)
            # Signed before any connection is held, so a connection slot waits for no signature
            # (but for the 7-bit form of an 8-bit message, made when an MX lacks 8BITMIME).
            await ready.data(seven_bit=False)
            payload: Payload | BaseException = ready
        except Exception as exc:  # recorded for every destination below, like any other failure
            payload = exc
        signed: bytes | None = None
        if claimed.sandbox:  # signed like any message, recorded delivered, sent to no MX
            signed, recorded = await self._record_sandbox(
                message.id, claimed.lease, by_domain, payload, outbound_ip
            )
        else:
            tenant = str(message.organization_id)
            transactions = self._transactions(claimed, by_domain)
            if self.decides and len(transactions) == 1:
                # One transaction (the usual case): the decision's statement stores its attempt.
                ((domain, rcpts, mail_from),) = transactions
                attempt = await self._deliver_one(
                    message.id, claimed.lease, domain, rcpts, mail_from, payload, outbound_ip, tenant
                )
                await self._decide(claimed, [attempt], None, unrecorded=attempt)
                return
            results = await asyncio.gather(
                *(
                    self._deliver_and_record(
                        message.id, claimed.lease, domain, rcpts, mail_from, payload, outbound_ip, tenant
                    )
                    for domain, rcpts, mail_from in transactions
                ),
                return_exceptions=True,
            )
            recorded = []
            for result in results:
                if isinstance(result, BaseException):  # the database failed us: the lease runs out
                    log_event(
                        logger,
                        "recording failed",
                        logging.ERROR,
                        message_id=message.id,
                        error=type(result).__name__,
                    )
                    recorded.append(None)
                else:
                    recorded.append(result)
        attempts = [a for a in recorded if a is not None]
        if self.decides and len(attempts) == len(recorded):
            await self._decide(claimed, attempts, signed)
            return
        # Another process decides (the retry function), from what the database holds.
        if not await pipeline.finish_sending(self.ctx.pipeline, message.id, claimed.lease, signed):
            log_event(logger, "lease lost before recording", logging.WARNING, message_id=message.id)
            return
        event = make_event(
            EventType.DELIVERY_ATTEMPTED,
            DeliveryAttempted(
                message_id=message.id,
                organization_id=message.organization_id,
                project_id=message.project_id,
                outbound_ip=outbound_ip,
            ),
        )
        await self.ctx.publisher.publish(event)

    async def _decide(
        self,
        claimed: pipeline.Claimed,
        attempts: list[pipeline.AttemptRecord],
        signed: bytes | None,
        *,
        unrecorded: pipeline.AttemptRecord | None = None,
    ) -> None:
        """The decide step on this attempt's own replies (every destination recorded, or the
        one `unrecorded`, stored by the same statement): sending → the outcome in one
        statement, as the retry function would have decided it from the stored rows, and the
        outcome event published here."""
        replies = {address: reply for a in attempts for address, reply in a.replies.items()}
        recipients = []
        for address, domain in claimed.recipients:
            code, enhanced, text = replies.get(address, (None, None, "no reply recorded"))
            # A recorded positive reply already made its recipient delivered (record_destination).
            delivered = unrecorded is None and classify(RecipientResult(code, enhanced, text)) == "delivered"
            recipients.append(
                pipeline.RecipientRow(
                    claimed.recipient_ids.get(address, 0),
                    address,
                    domain,
                    "delivered" if delivered else "pending",
                    code,
                    enhanced,
                    text,
                )
            )
        message = pipeline.Attempted(
            claimed.key,
            "sending",
            claimed.attempts,
            claimed.expires_at,
            recipients,
            claimed.created_at,
            tuple(claimed.settled),
        )
        events = await self._decisions.submit(
            (message, pipeline.SenderFinish(claimed.lease, signed, unrecorded))
        )
        if not events:
            log_event(logger, "lease lost before recording", logging.WARNING, message_id=claimed.key.id)
        for event in events:
            await self.ctx.publisher.publish(event)

    async def _apply_decisions(
        self, batch: list[tuple[pipeline.Attempted, pipeline.SenderFinish]]
    ) -> list[list[CloudEvent]]:
        """The decisions of messages finished at about the same time, in one statement; each
        message's outcome events (none: its lease was lost)."""
        policy = RetryPolicy(self.settings.retry_first_seconds, self.settings.retry_max_seconds)
        messages = [message for message, _ in batch]
        events = await apply_decisions(self.ctx.pipeline, messages, policy, [f for _, f in batch])
        by_message: dict[str, list[CloudEvent]] = defaultdict(list)
        for event in events:
            by_message[event.data["message_id"]].append(event)
        return [by_message.get(str(m.key.id), []) for m in messages]

    async def _record_sandbox(
        self,
        message_id: UUID,
        lease: str,
        by_domain: dict[str, list[str]],
        payload: Payload | BaseException,
        source_ip: str,
    ) -> tuple[bytes | None, list[pipeline.AttemptRecord | None]]:
        """A sandbox message's destinations, recorded delivered with a note and no DNS or MX
        contact; returns the signed bytes (None: signing failed, recorded as any failure) and
        each destination's recorded attempt (None: not recorded, the lease was lost)."""
        recorded: list[pipeline.AttemptRecord | None] = []
        try:
            if isinstance(payload, BaseException):
                raise payload
            signed = await payload.data(seven_bit=False)
        except Exception as exc:
            for domain, rcpts in by_domain.items():
                recorded.append(
                    await self._deliver_and_record(message_id, lease, domain, rcpts, "", exc, source_ip)
                )
            return None, recorded
        for domain, rcpts in by_domain.items():
            attempt = _sandbox_attempt(domain, rcpts, source_ip)
            if await pipeline.record_destination(self.ctx.pipeline, message_id, lease, attempt, rcpts):
                recorded.append(attempt)
            else:
                log_event(logger, "lease lost before recording", logging.WARNING, message_id=message_id)
                recorded.append(None)
            log_event(
                logger, "sandbox attempt", message_id=message_id, domain=domain, egress_source=source_ip
            )
        return signed, recorded

    def _transactions(
        self, claimed: pipeline.Claimed, by_domain: dict[str, list[str]]
    ) -> list[tuple[str, list[str], str]]:
        """(domain, recipients, MAIL FROM): one per recipient with its VERP token once the
        sender's return-path domain is verified (the claim read both), else one per domain."""
        return envelope_senders(
            self._return_path_key,
            claimed.key.id,
            claimed.mail_from,
            claimed.return_domain,
            claimed.recipient_ids,
            by_domain,
        )

    async def _deliver_and_record(
        self,
        message_id: UUID,
        lease: str,
        domain: str,
        recipients: list[str],
        mail_from: str,
        payload: Payload | BaseException,
        source_ip: str,
        tenant: str = "",
    ) -> pipeline.AttemptRecord | None:
        """One destination, start to end: its outcome is stored the moment it is known, so a
        crash later never sends to recipients that already have the message. Returns the
        recorded attempt (None: the lease was no longer ours, nothing was stored)."""
        attempt = await self._deliver_one(
            message_id, lease, domain, recipients, mail_from, payload, source_ip, tenant
        )
        delivered = [
            address
            for address, (code, enhanced, text) in attempt.replies.items()
            if classify(RecipientResult(code, enhanced, text)) == "delivered"
        ]
        if await pipeline.record_destination(self.ctx.pipeline, message_id, lease, attempt, delivered):
            return attempt
        log_event(
            logger, "lease lost before recording", logging.WARNING, message_id=message_id, domain=domain
        )
        return None

    async def _deliver_one(
        self,
        message_id: UUID,
        lease: str,
        domain: str,
        recipients: list[str],
        mail_from: str,
        payload: Payload | BaseException,
        source_ip: str,
        tenant: str,
    ) -> pipeline.AttemptRecord:
        """One destination's transaction (or why there was none), logged and counted; `tenant`
        (the organization) takes its turn with the others in a site's ready queue."""
        if isinstance(payload, BaseException):
            attempt = await contained(_reraise(payload), domain, recipients, source_ip)
        else:
            attempt = await contained(
                self._attempt(domain, recipients, mail_from, payload, source_ip, message_id, lease, tenant),
                domain,
                recipients,
                source_ip,
            )
        log_event(
            logger,
            "attempt",
            message_id=message_id,
            domain=domain,
            mx_host=attempt.mx_host,
            egress_source=attempt.source_ip,
            site=attempt.site,
            waited=attempt.waited,
            tls=attempt.tls_version or "none",
            code=attempt.code,
            enhanced=attempt.enhanced,
            duration_ms=attempt.duration_ms,
        )
        metrics.ATTEMPTS.labels(classify(RecipientResult(attempt.code, attempt.enhanced, attempt.text))).inc()
        return attempt

    async def _attempt(
        self,
        domain: str,
        recipients: list[str],
        mail_from: str,
        payload: Payload,
        source_ip: str,
        message_id: UUID,
        lease: str,
        tenant: str = "",
    ) -> pipeline.AttemptRecord:
        started = time.monotonic()
        mx_domain = ascii_domain(domain)
        if mx_domain is None:
            return failed_attempt(
                domain, recipients, source_ip, "5.1.2", f"{domain} is no valid domain", started
            )
        try:
            hosts = await resolve_destination(
                self.resolver, mx_domain, source_ip, self.rng, self.destinations
            )
        except DeliveryDnsError as exc:
            return failed_attempt(domain, recipients, source_ip, exc.enhanced, exc.text, started)
        names = [h.name for h in hosts]
        site = site_name(names)
        to = _Destination(message_id, lease, domain, site, self._limits_of(site, names), source_ip, tenant)
        envelope = Envelope(mail_from, recipients, payload)
        looked_up = time.monotonic()
        policy = await self.mta_sts.policy(mx_domain) if self.mta_sts is not None else None
        if time.monotonic() - looked_up >= POLICY_WAIT_NOTED:
            to.waits.append(f"policy: {time.monotonic() - looked_up:.1f} s for the MTA-STS policy")
        if policy is None:
            attempt = await self._deliver(to, hosts, envelope)
        else:
            attempt = await self._deliver_under_policy(policy, to, hosts, envelope, started)
        waited = "; ".join(to.waits)[:400] or None
        return dataclasses.replace(attempt, site=to.site, waited=waited)

    def _limits_of(self, site: str, mx_hosts: list[str]) -> Limits:
        limits = self._site_limits.get(site)
        if limits is None:
            if len(self._site_limits) >= SITE_LIMITS_KEPT:
                self._site_limits.clear()
            limits = self._site_limits[site] = limits_for(self.shaping, mx_hosts)[0]
        return limits

    async def _deliver(
        self, to: _Destination, hosts: list[MxHost], envelope: Envelope, *, verified: bool = False
    ) -> pipeline.AttemptRecord:
        """One transaction under the site's limits: wait in its ready queue for a ticket (the
        message's lease renewed meanwhile), deliver, give the connection back; a throttling
        reply suspends the (IP, site)."""
        started = time.monotonic()
        queue = self.shaper.queue(to.source_ip, to.site, to.limits)
        tls = self.tls_verified if verified else self.tls
        want = Want(
            frozenset((to.source_ip, ip, self.settings.delivery_port) for h in hosts for ip in h.addresses),
            tls.require_verified,
        )
        renew_every = self.lease_seconds / 3

        async def renew() -> None:
            await pipeline.extend_lease(self.ctx.pipeline, to.message_id, to.lease, self.lease_seconds)

        try:
            ticket = await queue.acquire(want, renew, renew_every, to.tenant)
        except ShapingRefused as exc:
            return failed_attempt(
                to.domain, envelope.recipients, to.source_ip, "4.4.5", f"shaping: {exc}", started
            )
        if ticket.why is not None:
            to.waits.append(f"shaping: {ticket.waited:.1f} s for {ticket.why}")
            if ticket.waited >= renew_every:  # the delivery itself gets a whole lease
                await renew()
        throttled = False
        try:
            attempt = await deliver(
                to.domain,
                hosts,
                envelope,
                ticket=ticket,
                source_ip=to.source_ip,
                port=self.settings.delivery_port,
                hostname=self.settings.hostname,
                tls=tls,
                step_timeout=self.settings.smtp_client_timeout_seconds,
                unreachable="4.7.5" if verified else "4.4.1",
            )
            throttled = is_throttling(attempt.code, attempt.enhanced, attempt.text, self.shaping.throttle)
            if throttled:  # at once, before the slot can serve the next in line
                queue.suspend(time.time() + self.shaping.throttle.suspend_seconds)
        finally:
            queue.release(ticket, reusable=not throttled)  # a throttled connection is closed
        if throttled:
            reply = " ".join(str(p) for p in (attempt.code, attempt.enhanced, attempt.text) if p)
            try:
                until = await queue.throttled(reply)
            except Exception as exc:  # suspended here all the same; the reply is what is recorded
                log_event(logger, "suspension not stored", logging.WARNING, error=type(exc).__name__)
                until = queue.suspended_until
            note = f"site {to.site} from {to.source_ip} suspended until {_clock(until)}"
            attempt = dataclasses.replace(attempt, text=f"{attempt.text} ({note})"[:1000])
        return attempt

    async def _deliver_under_policy(
        self,
        policy: Policy,
        to: _Destination,
        hosts: list[MxHost],
        envelope: Envelope,
        started: float,
    ) -> pipeline.AttemptRecord:
        """`enforce`: only the MX hosts the policy names, over verified TLS, else 4.7.5.
        `testing`: the same try; when it would have failed, deliver as without a policy and
        record why in the attempt log (its TLS field, like a TLSRPT failure detail)."""
        domain = to.domain
        tag = f"mta-sts {policy.mode} id={policy.id}"
        names = set(allowed_hosts(policy, [h.name for h in hosts]))
        matching = [h for h in hosts if h.name in names]
        failure: str
        if matching:
            attempt = await self._deliver(to, matching, envelope, verified=True)
            if attempt.code is not None or policy.mode == "enforce":
                return _noted(attempt, tag)
            failure = f"validation-failure: {attempt.text}"
        else:
            failure = "no MX host is named by the policy: " + ", ".join(h.name for h in hosts)
            if policy.mode == "enforce":
                text = f"MTA-STS policy of {domain} (enforce): {failure}"
                return _noted(
                    failed_attempt(domain, envelope.recipients, to.source_ip, "4.7.5", text, started), tag
                )
        log_event(logger, "mta-sts testing would fail", logging.WARNING, domain=domain, reason=failure[:200])
        attempt = await self._deliver(to, hosts, envelope)
        return _noted(attempt, f"{tag}: would have failed: {failure}")


@dataclasses.dataclass
class _Destination:
    """One destination's delivery: where it goes, and why it waited (for the attempt log)."""

    message_id: UUID
    lease: str  # the claim's, renewed while it waits
    domain: str
    site: str
    limits: Limits
    source_ip: str
    tenant: str = ""  # the organization: tenants take turns in a ready queue
    waits: list[str] = dataclasses.field(default_factory=list)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


SANDBOX_NOTE = "sandbox: not sent"


def _sandbox_attempt(domain: str, recipients: list[str], source_ip: str) -> pipeline.AttemptRecord:
    """What a sandbox destination records: a positive final reply that no server gave."""
    reply = (250, "2.0.0", SANDBOX_NOTE)
    return pipeline.AttemptRecord(
        domain, recipients, None, source_ip, None, *reply, 0, dict.fromkeys(recipients, reply)
    )


def _noted(attempt: pipeline.AttemptRecord, note: str) -> pipeline.AttemptRecord:
    """The policy outcome beside the TLS version in the attempt log."""
    tls = f"{attempt.tls_version}; {note}" if attempt.tls_version else note
    return dataclasses.replace(attempt, tls_version=tls[:400])


async def _reraise(exc: BaseException) -> pipeline.AttemptRecord:
    raise exc
