"""The sender node: owns this node's egress sources (outbound IPs), takes the routed messages
for them, signs, delivers to each destination's MX and records what happened.

message.routed (outboundip = one of ours) → delivery.attempted
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from uuid import UUID

from cloudevents.http import CloudEvent

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
from sender_node.connections import ConnectionCache
from sender_node.dkim_signer import DkimSigner
from sender_node.egress_ips import bindable
from sender_node.mx import DeliveryDnsError, resolve_destination
from sender_node.smtp_client import Envelope, TlsPolicy, deliver, failed_attempt

__all__ = ["SenderNode"]

logger = logging.getLogger("remails.sender")


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
        self._signers: dict[tuple[UUID, str], DkimSigner | None] = {}
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
        sender_domain = mail_from.rpartition("@")[2].lower()
        cache_key = (org_id, sender_domain)
        if cache_key not in self._signers:
            signer = None
            candidates = [sender_domain]
            parts = sender_domain.split(".")
            candidates += [".".join(parts[i:]) for i in range(1, len(parts) - 1)]
            for name in candidates:  # the most specific registered domain signs
                key = await signing_key(self.ctx.pipeline, org_id, name)
                if key is not None and is_same_or_subdomain(sender_domain, key.domain):
                    pem = self.ctx.master_key.open(key.private_sealed, context=key.domain)
                    signer = DkimSigner(key.domain, key.selector, pem)
                    break
            self._signers[cache_key] = signer
        return self._signers[cache_key]

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
        body = normalise_line_endings(claimed.raw)
        signer = await self._signer(message.organization_id, claimed.mail_from)
        if signer is not None:
            body = signer.signature_header(body) + body
        by_domain: dict[str, list[str]] = defaultdict(list)
        for address, domain in claimed.recipients:
            by_domain[domain].append(address)
        attempts = await asyncio.gather(
            *(
                self._attempt(domain, rcpts, claimed.mail_from, body, data.outbound_ip)
                for domain, rcpts in by_domain.items()
            )
        )
        if not await pipeline.record_attempts(self.ctx.pipeline, message.id, self.name, attempts):
            log_event(logger, "lease lost before recording", logging.WARNING, message_id=message.id)
            return None
        for a in attempts:
            log_event(
                logger,
                "attempt",
                message_id=message.id,
                domain=a.domain,
                mx_host=a.mx_host,
                egress_source=a.source_ip,
                tls=a.tls_version,
                code=a.code,
                enhanced=a.enhanced,
                duration_ms=a.duration_ms,
            )
        return make_event(
            EventType.DELIVERY_ATTEMPTED,
            DeliveryAttempted(
                message_id=message.id,
                organization_id=message.organization_id,
                project_id=message.project_id,
                outbound_ip=data.outbound_ip,
            ),
        )

    async def _attempt(
        self, domain: str, recipients: list[str], mail_from: str, body: bytes, source_ip: str
    ) -> pipeline.AttemptRecord:
        started = time.monotonic()
        try:
            hosts = await resolve_destination(self.resolver, domain, source_ip, self.rng)
        except DeliveryDnsError as exc:
            return failed_attempt(domain, recipients, source_ip, exc.enhanced, exc.text, started)
        return await deliver(
            domain,
            hosts,
            Envelope(mail_from, recipients, body),
            cache=self.connections,
            source_ip=source_ip,
            port=self.settings.delivery_port,
            hostname=self.settings.hostname,
            tls=self.tls,
            step_timeout=self.settings.smtp_client_timeout_seconds,
        )
