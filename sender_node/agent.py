"""The sender node: owns this node's egress sources (outbound IPs), takes the routed messages
for them, signs, delivers to each destination's MX and records what happened.

message.routed (outboundip = one of ours) → delivery.attempted
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from remails.db import egress, inbound, pipeline
from remails.db.dkim_keys import signing_keys
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
from remails.return_path import KEY_PURPOSE, envelope_senders
from sender_node.connections import ConnectionCache
from sender_node.dkim_signer import DkimSigner, SignerSet
from sender_node.egress_ips import bindable
from sender_node.mta_sts import MtaSts, Policy, allowed_hosts
from sender_node.mx import DeliveryDnsError, MxHost, resolve_destination
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
        ca_file = ctx.settings.tls_ca_file
        self.tls = TlsPolicy(require_verified=ctx.settings.require_verified_tls, ca_file=ca_file)
        # MTA-STS: verified TLS, with connections of its own (never an unverified cached one).
        self.tls_verified = TlsPolicy(require_verified=True, ca_file=ca_file)
        self.verified_connections = ConnectionCache()
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
        self._signers: dict[tuple[UUID, str, tuple[tuple[str, bytes], ...]], DkimSigner | SignerSet] = {}
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
        await self.verified_connections.close_idle(everything=True)
        if self.mta_sts is not None:
            await self.mta_sts.close()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self.connections.close_idle()
            await self.verified_connections.close_idle()
            if self.settings.outbound_ips_discover:  # a floating IP may have moved here or away
                self.ips = bindable(list(self.settings.outbound_ips))
            try:
                stale = self.settings.heartbeat_seconds * 3
                await egress.heartbeat(self.ctx.pipeline, self.name, self.ips, stale)
            except Exception as exc:  # a missed beat only delays routing to us
                log_event(logger, "heartbeat failed", logging.WARNING, error=type(exc).__name__)

    async def _signer(self, org_id: UUID, mail_from: str) -> DkimSigner | SignerSet | None:
        """The signer of the most specific registered domain of the sender: its RSA key, and its
        Ed25519 key beside it when it has one. The key rows are read for every message (a
        rotated or re-added key signs at once); only the parsed keys are kept, under digests of
        the sealed keys themselves."""
        sender_domain = mail_from.rpartition("@")[2].lower()
        candidates = [sender_domain]
        parts = sender_domain.split(".")
        candidates += [".".join(parts[i:]) for i in range(1, len(parts) - 1)]
        for name in candidates:
            keys = await signing_keys(self.ctx.pipeline, org_id, name)
            if not keys or not is_same_or_subdomain(sender_domain, keys[0].domain):
                continue
            digests = tuple((k.selector, hashlib.sha256(k.private_sealed).digest()) for k in keys)
            cache_key = (org_id, keys[0].domain, digests)
            signer = self._signers.get(cache_key)
            if signer is None:
                signers = [
                    DkimSigner(
                        k.domain, k.selector, self.ctx.master_key.open(k.private_sealed, context=k.domain)
                    )
                    for k in keys
                ]
                signer = signers[0] if len(signers) == 1 else SignerSet(signers)
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
        signed: bytes | None = None
        if claimed.sandbox:  # signed like any message, recorded delivered, sent to no MX
            signed = await self._record_sandbox(message.id, by_domain, payload, data.outbound_ip)
        transactions = (
            [] if claimed.sandbox else await self._transactions(message.id, claimed.mail_from, by_domain)
        )
        results = await asyncio.gather(
            *(
                self._deliver_and_record(message.id, domain, rcpts, mail_from, payload, data.outbound_ip)
                for domain, rcpts, mail_from in transactions
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
        if not await pipeline.finish_sending(self.ctx.pipeline, message.id, self.name, signed):
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

    async def _record_sandbox(
        self,
        message_id: UUID,
        by_domain: dict[str, list[str]],
        payload: Payload | BaseException,
        source_ip: str,
    ) -> bytes | None:
        """A sandbox message's destinations, recorded delivered with a note and no DNS or MX
        contact; returns the signed bytes (None: signing failed, recorded as any failure)."""
        try:
            if isinstance(payload, BaseException):
                raise payload
            signed = payload.data(seven_bit=False)
        except Exception as exc:
            for domain, rcpts in by_domain.items():
                await self._deliver_and_record(message_id, domain, rcpts, "", exc, source_ip)
            return None
        for domain, rcpts in by_domain.items():
            attempt = _sandbox_attempt(domain, rcpts, source_ip)
            if not await pipeline.record_destination(
                self.ctx.pipeline, message_id, self.name, attempt, rcpts
            ):
                log_event(logger, "lease lost before recording", logging.WARNING, message_id=message_id)
            log_event(
                logger, "sandbox attempt", message_id=message_id, domain=domain, egress_source=source_ip
            )
        return signed

    async def _transactions(
        self, message_id: UUID, mail_from: str, by_domain: dict[str, list[str]]
    ) -> list[tuple[str, list[str], str]]:
        """(domain, recipients, MAIL FROM): one per recipient with its VERP token once the
        sender's return-path domain is verified, else one per domain."""
        return_domain, ids = await inbound.return_path_recipients(self.ctx.pipeline, message_id)
        key = self.ctx.master_key.derive(KEY_PURPOSE)
        return envelope_senders(key, message_id, mail_from, return_domain, ids, by_domain)

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
        envelope = Envelope(mail_from, recipients, payload)
        policy = await self.mta_sts.policy(mx_domain) if self.mta_sts is not None else None
        if policy is None:
            return await self._deliver(domain, hosts, envelope, source_ip)
        return await self._deliver_under_policy(policy, domain, hosts, envelope, source_ip, started)

    async def _deliver(
        self, domain: str, hosts: list[MxHost], envelope: Envelope, source_ip: str, *, verified: bool = False
    ) -> pipeline.AttemptRecord:
        return await deliver(
            domain,
            hosts,
            envelope,
            cache=self.verified_connections if verified else self.connections,
            source_ip=source_ip,
            port=self.settings.delivery_port,
            hostname=self.settings.hostname,
            tls=self.tls_verified if verified else self.tls,
            step_timeout=self.settings.smtp_client_timeout_seconds,
            unreachable="4.7.5" if verified else "4.4.1",
        )

    async def _deliver_under_policy(
        self,
        policy: Policy,
        domain: str,
        hosts: list[MxHost],
        envelope: Envelope,
        source_ip: str,
        started: float,
    ) -> pipeline.AttemptRecord:
        """`enforce`: only the MX hosts the policy names, over verified TLS, else 4.7.5.
        `testing`: the same try; when it would have failed, deliver as without a policy and
        record why in the attempt log (its TLS field, like a TLSRPT failure detail)."""
        tag = f"mta-sts {policy.mode} id={policy.id}"
        names = set(allowed_hosts(policy, [h.name for h in hosts]))
        matching = [h for h in hosts if h.name in names]
        failure: str
        if matching:
            attempt = await self._deliver(domain, matching, envelope, source_ip, verified=True)
            if attempt.code is not None or policy.mode == "enforce":
                return _noted(attempt, tag)
            failure = f"validation-failure: {attempt.text}"
        else:
            failure = "no MX host is named by the policy: " + ", ".join(h.name for h in hosts)
            if policy.mode == "enforce":
                text = f"MTA-STS policy of {domain} (enforce): {failure}"
                return _noted(
                    failed_attempt(domain, envelope.recipients, source_ip, "4.7.5", text, started), tag
                )
        log_event(logger, "mta-sts testing would fail", logging.WARNING, domain=domain, reason=failure[:200])
        attempt = await self._deliver(domain, hosts, envelope, source_ip)
        return _noted(attempt, f"{tag}: would have failed: {failure}")


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
