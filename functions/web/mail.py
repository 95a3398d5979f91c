"""Mail the dashboard sends (password reset links, invitations) through system mail: stored in
the system project like any message, then announced with `message.received`."""

from __future__ import annotations

import logging

from remails.context import Context
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event
from remails.system_mail import store_system_mail, system_message, system_sender

__all__ = ["send_system_mail"]

logger = logging.getLogger("remails.web")


async def send_system_mail(ctx: Context, to: str, subject: str, text: str, *, label: str) -> bool:
    """True when the message was stored for delivery; False when system mail is off."""
    sender = await system_sender(ctx.pool, ctx.settings)
    if sender is None:
        return False
    message = system_message(ctx.settings, sender, [to], f"[Remails] {subject}", text, label=label)
    await store_system_mail(ctx.pool, ctx.settings, message)
    data = MessageEvent(
        message_id=message.id, organization_id=sender.organization_id, project_id=sender.project_id
    )
    try:
        await ctx.publisher.publish(make_event(EventType.MESSAGE_RECEIVED, data))
    except Exception as exc:  # stored: the sweep re-emits what this missed
        log_event(logger, "publish failed", logging.WARNING, message_id=message.id, error=type(exc).__name__)
    log_event(logger, "system mail stored", label=label, message_id=message.id)
    return True
