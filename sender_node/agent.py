"""The sender node: owns this node's egress sources (outbound IPs), takes the routed messages
for them, signs, delivers to each destination's MX and records what happened.

message.routed (outboundip = one of ours) → delivery.attempted
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import defaultdict
from uuid import UUID

from cloudevents.http import CloudEvent

from remails import metrics
from remails.addresses import ascii_domain
from remails.bus import Trigger
from remails.context import Context
from remails.db import egress, pipeline
from remails.db.domains import signing_key
from remails.dns import make_resolver
from remails.domain_records import is_same_or_subdomain
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
from remails.outcomes import RecipientResult, classify
from sender_node.connections import ConnectionCache
from sender_node.dkim_signer import DkimSigner
from sender_node.egress_ips import bindable
from sender_node.mx import DeliveryDnsError, resolve_destination
from sender_node.payload import Payload
from sender_node.smtp_client import Envelope, TlsPolicy, contained, deliver, failed_attempt

__all__ = ["SenderNode"]

logger = logging.getLogger("remails.sender")

SIGNER_CACHE_SIZE = 1000  # parsed keys kept; past this the cache starts over


class SenderNode:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.name = ctx.settings.effective_node_name
        configured = list(ctx.settings.outbound_ips)
        self.ips = bindable(configured) if ctx.settings.outbound_ips_discover else configured
        self.resolver = make_resolver(ctx.settings, cache=True)
        self.tls = TlsPolicy(require_verified=ctx.settings.require_verified_tls)
        self.rng = random.Random()
        self._signers: dict[tuple[UUID, str, str, bytes], DkimSigner] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self.connections = ConnectionCache()
        # The lease outlives the longest attempt: every MX step may take the full timeout.
        self.lease_seconds = max(
            self.settings.stuck_after_seconds, 8 * self.settings.smtp_client_timeout_seconds
        )

    def triggers(self) -> list[Trigger]:
        """One trigger per egress source, like one Knative Trigger per IP pointing at this node."""
        return [
            Trigger(
                f"sender-{self.name}-{ip}",
                [{"exact": {"type": EventType.MESSAGE_ROUTED.value, "outboundip": ip}}],
                self.handle_routed,
            )
            for ip in self.ips
        ]

    async def start(self) -> None:
        await egress.register_node(self.ctx.pipeline, self.name, self.ips, self.settings.node_url)
        # Whatever this node was sending before a restart is not being sent now.
        for key in await pipeline.release_node_leases(self.ctx.pipeline, self.name):
            data = MessageEvent(
                message_id=key.id, organization_id=key.organization_id, project_id=key.project_id
            )
            await self.ctx.publisher.publish(make_event(EventType.MESSAGE_ADMITTED, data))
        self._heartbeat = asyncio.create_task(self._beat())
        log_event(logger, "sender node started", node=self.name, egress_sources=self.ips)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self.connections.close_idle(everything=True)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self.connections.close_idle()
            try:
                stale = self.settings.heartbeat_seconds * 3
                await egress.heartbeat(self.ctx.pipeline, self.name, self.ips, stale)
            except Exception as exc:  # a missed beat only delays routing to us
                log_event(logger, "heartbeat failed", logging.WARNING, error=type(exc).__name__)

    async def _signer(self, org_id: UUID, mail_from: str) -> DkimSigner | None:
        """The signer of the most specific registered domain of the sender. The key row is read
        for every message (a deleted and re-added domain has a new key at once); only the
        parsed key is kept, under a digest of the sealed key itself."""
        sender_domain = mail_from.rpartition("@")[2].lower()
        candidates = [sender_domain]
        parts = sender_domain.split(".")
        candidates += [".".join(parts[i:]) for i in range(1, len(parts) - 1)]
        for name in candidates:
            key = await signing_key(self.ctx.pipeline, org_id, name)
            if key is None or not is_same_or_subdomain(sender_domain, key.domain):
                continue
            cache_key = (org_id, key.domain, key.selector, hashlib.sha256(key.private_sealed).digest())
            signer = self._signers.get(cache_key)
            if signer is None:
                pem = self.ctx.master_key.open(key.private_sealed, context=key.domain)
                signer = DkimSigner(key.domain, key.selector, pem)
                if len(self._signers) >= SIGNER_CACHE_SIZE:
                    self._signers.clear()
                self._signers[cache_key] = signer
            return signer
        return None

    async def handle_routed(self, event: CloudEvent) -> CloudEvent | None:
        data = event_data(event, MessageRouted)
        if data.outbound_ip not in self.ips:
            return None
        claimed = await pipeline.claim_for_sending(
            self.ctx.pipeline, data.message_id, data.outbound_ip, self.name, self.lease_seconds
        )
        if claimed is None:
            return None  # a duplicate event, or another node took it
        message = claimed.key
        by_domain: dict[str, list[str]] = defaultdict(list)
        for address, domain in claimed.recipients:
            by_domain[domain].append(address)
        try:
            signer = await self._signer(message.organization_id, claimed.mail_from)
            payload: Payload | BaseException = Payload(normalise_line_endings(claimed.raw), signer)
        except Exception as exc:  # recorded for every destination below, like any other failure
            payload = exc
        results = await asyncio.gather(
            *(
                self._deliver_and_record(
                    message.id, domain, rcpts, claimed.mail_from, payload, data.outbound_ip
                )
                for domain, rcpts in by_domain.items()
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):  # the database failed us: the lease runs out
                log_event(
                    logger,
                    "recording failed",
                    logging.ERROR,
                    message_id=message.id,
                    error=type(result).__name__,
                )
        if not await pipeline.finish_sending(self.ctx.pipeline, message.id, self.name):
            log_event(logger, "lease lost before recording", logging.WARNING, message_id=message.id)
            return None
        return make_event(
            EventType.DELIVERY_ATTEMPTED,
            DeliveryAttempted(
                message_id=message.id,
                organization_id=message.organization_id,
                project_id=message.project_id,
                outbound_ip=data.outbound_ip,
            ),
        )

    async def _deliver_and_record(
        self,
        message_id: UUID,
        domain: str,
        recipients: list[str],
        mail_from: str,
        payload: Payload | BaseException,
        source_ip: str,
    ) -> None:
        """One destination, start to end: its outcome is stored the moment it is known, so a
        crash later never sends to recipients that already have the message."""
        if isinstance(payload, BaseException):
            attempt = await contained(_reraise(payload), domain, recipients, source_ip)
        else:
            attempt = await contained(
                self._attempt(domain, recipients, mail_from, payload, source_ip),
                domain,
                recipients,
                source_ip,
            )
        delivered = [
            address
            for address, (code, enhanced, text) in attempt.replies.items()
            if classify(RecipientResult(code, enhanced, text)) == "delivered"
        ]
        if not await pipeline.record_destination(
            self.ctx.pipeline, message_id, self.name, attempt, delivered
        ):
            log_event(
                logger, "lease lost before recording", logging.WARNING, message_id=message_id, domain=domain
            )
        log_event(
            logger,
            "attempt",
            message_id=message_id,
            domain=domain,
            mx_host=attempt.mx_host,
            egress_source=attempt.source_ip,
            tls=attempt.tls_version or "none",
            code=attempt.code,
            enhanced=attempt.enhanced,
            duration_ms=attempt.duration_ms,
        )
        metrics.ATTEMPTS.labels(classify(RecipientResult(attempt.code, attempt.enhanced, attempt.text))).inc()

    async def _attempt(
        self, domain: str, recipients: list[str], mail_from: str, payload: Payload, source_ip: str
    ) -> pipeline.AttemptRecord:
        started = time.monotonic()
        mx_domain = ascii_domain(domain)
        if mx_domain is None:
            return failed_attempt(
                domain, recipients, source_ip, "5.1.2", f"{domain} is no valid domain", started
            )
        try:
            hosts = await resolve_destination(self.resolver, mx_domain, source_ip, self.rng)
        except DeliveryDnsError as exc:
            return failed_attempt(domain, recipients, source_ip, exc.enhanced, exc.text, started)
        return await deliver(
            domain,
            hosts,
            Envelope(mail_from, recipients, payload),
            cache=self.connections,
            source_ip=source_ip,
            port=self.settings.delivery_port,
            hostname=self.settings.hostname,
            tls=self.tls,
            step_timeout=self.settings.smtp_client_timeout_seconds,
        )


async def _reraise(exc: BaseException) -> pipeline.AttemptRecord:
    raise exc
