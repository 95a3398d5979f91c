"""The inbound MX's handler: mail coming back to addresses we issued, and nothing else.

RCPT is the whole policy: a return-path token of a message of ours (on the return-path domain
of that message's organization), a DMARC report address of a domain of ours, the feedback
address, or postmaster. Anything else is `550 5.1.1` at RCPT — never relayed, and never
accepted then bounced (no backscatter). What is accepted is stored before the 250 and handed
to the inbound function (`inbound.received`).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from aiosmtpd.smtp import Envelope, Session, TLSSetupException

from remails import metrics
from remails.context import Context
from remails.db import inbound
from remails.db.rows import transaction
from remails.errors import BareLineEnding, Reply, TemporaryFailure
from remails.events import EventType, InboundReceived, make_event
from remails.log import log_event
from remails.message_headers import has_bare_line_ending
from remails.return_path import KEY_PURPOSE, InboundAddress, classify_address
from remails_smtp_edge.handler import client_ip
from remails_smtp_edge.policy import check_address_charset, check_recipient_count
from remails_smtp_edge.replies import RECIPIENT_OK, SENDER_OK, queued
from remails_smtp_edge.store_budget import StoreBudget

if TYPE_CHECKING:
    from remails_smtp_edge.server import EdgeSMTP

__all__ = ["NO_SUCH_USER", "InboundHandler"]

logger = logging.getLogger("remails.edge.mx")

NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
_TEMPORARY = TemporaryFailure().smtp_reply()


@dataclass(frozen=True)
class _Accepted:
    """One recipient the MX took, with what its address names."""

    address: InboundAddress
    organization_id: UUID | None = None
    message_id: UUID | None = None
    recipient_id: int | None = None
    domain_id: UUID | None = None


class InboundHandler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.key = ctx.master_key.derive(KEY_PURPOSE)
        self.store_budget = StoreBudget(ctx.settings.smtp_store_budget_bytes)
        self.storing = 0
        self._accepted: weakref.WeakKeyDictionary[Envelope, list[_Accepted]] = weakref.WeakKeyDictionary()

    async def handle_EHLO(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log_event(logger, "tls handshake failed", logging.WARNING, error=str(error.__cause__))
        else:
            logger.error("smtp session error", exc_info=error)
        return _TEMPORARY

    async def handle_MAIL(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Any sender, the null one (<>) above all: that is where DSNs come from.
        charset = check_address_charset(address, envelope.smtp_utf8)
        if charset is not None:
            return str(charset)
        envelope.mail_from = address  # "<>" for the null sender (aiosmtpd needs it non-empty)
        envelope.mail_options.extend(mail_options)
        return str(SENDER_OK)

    async def _target(self, address: InboundAddress) -> _Accepted | None:
        if address.bounce is not None:
            found = await inbound.bounce_target(
                self.ctx.pool, address.bounce.message_id, address.bounce.recipient_id, address.domain
            )
            if found is None:
                return None
            return _Accepted(address, found.organization_id, found.message_id, found.recipient_id)
        if address.report_domain_id is not None:
            report = await inbound.report_target(self.ctx.pool, address.report_domain_id)
            if report is None:
                return None
            return _Accepted(address, report.organization_id, domain_id=report.domain_id)
        return _Accepted(address)

    async def handle_RCPT(
        self,
        server: EdgeSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = check_recipient_count(len(envelope.rcpt_tos), self.settings.smtp_max_recipients)
        if refusal is not None:
            return refusal.smtp_reply()
        ours = classify_address(
            self.key,
            address,
            hostname=self.settings.hostname,
            reports_domain=self.settings.effective_reports_domain,
        )
        accepted = await self._target(ours) if ours is not None else None
        if accepted is None:
            log_event(
                logger,
                "recipient refused",
                client_ip=client_ip(session),
                rcpt_domain=address.rpartition("@")[2][:255],
                kind=ours.kind if ours is not None else "not ours",
            )
            return str(NO_SUCH_USER)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self._accepted.setdefault(envelope, []).append(accepted)
        return str(RECIPIENT_OK)

    async def handle_DATA(self, server: EdgeSMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if has_bare_line_ending(data):
            log_event(logger, "bare line ending refused", logging.WARNING, client_ip=client_ip(session))
            return BareLineEnding().smtp_reply()
        accepted = self._accepted.pop(envelope, [])
        if not accepted or envelope.mail_from is None:  # RSET or a refused RCPT only
            return "503 5.5.1 Need RCPT command"
        self.storing += 1
        try:
            return await self._store(session, envelope.mail_from, accepted, data)
        finally:
            self.storing -= 1

    async def _store(self, session: Session, mail_from: str, accepted: list[_Accepted], data: bytes) -> str:
        ip = client_ip(session)
        ids: list[tuple[UUID, str]] = []
        try:
            async with self.store_budget.hold(len(data)), transaction(self.ctx.pool) as tx:
                for item in accepted:
                    new = inbound.NewInbound(
                        kind=item.address.kind,
                        rcpt=item.address.address,
                        mail_from="" if mail_from == "<>" else mail_from,
                        client_ip=ip,
                        raw=data,
                        organization_id=item.organization_id,
                        message_id=item.message_id,
                        recipient_id=item.recipient_id,
                        domain_id=item.domain_id,
                    )
                    ids.append((await inbound.store_inbound(tx, new), item.address.kind))
        except Exception as exc:
            log_event(logger, "store failed", logging.ERROR, error=type(exc).__name__, client_ip=ip)
            return _TEMPORARY
        for inbound_id, kind in ids:
            log_event(
                logger, "inbound received", inbound_id=inbound_id, kind=kind, size=len(data), client_ip=ip
            )
            event = make_event(EventType.INBOUND_RECEIVED, InboundReceived(inbound_id=inbound_id, kind=kind))
            try:
                await self.ctx.publisher.publish(event)
            except Exception as exc:  # stored; the sweep re-emits what this missed
                log_event(
                    logger, "publish failed", logging.WARNING, inbound_id=inbound_id, error=type(exc).__name__
                )
        metrics.ACCEPTED.labels("mx").inc()
        return queued(str(ids[0][0]))
