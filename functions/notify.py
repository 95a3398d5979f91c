"""notify: mail each new notification from the system project, through the normal pipeline.

tick → claims pending notifications; for each, stores one system message (`remails.system_mail`)
to the organization's notification_email and its admins and marks the notification sent — in
one transaction, so a notification is mailed once — then emits `message.received`. From there
it is any message: validated, counted, DKIM-signed, retried and logged. Without system mail
(or without recipients) the notification is marked not_sent.
"""

from __future__ import annotations

import logging
from datetime import UTC

from cloudevents.http import CloudEvent

from remails.context import Context
from remails.db import notifications
from remails.events import EventType, MessageEvent, make_event
from remails.log import log_event
from remails.system_mail import store_system_mail, system_message, system_sender

__all__ = ["BATCH", "TICK_FILTERS", "handle_tick", "notification_text"]

TICK_FILTERS = [{"exact": {"type": EventType.TICK.value}}]
BATCH = 100

logger = logging.getLogger("remails.notify")


def notification_text(item: notifications.ToMail) -> str:
    """The plain-text body: what happened, the details as lines, where to read more."""
    lines = [item.subject + ".", "", f"Organization: {item.organization_name} ({item.organization_id})"]
    lines += [f"{key}: {value}" for key, value in sorted(item.details.items()) if not isinstance(value, dict)]
    lines += [
        f"Notification: {item.kind}, {item.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"All notifications: GET /v1/organizations/{item.organization_id}/notifications",
    ]
    return "\n".join(lines) + "\n"


async def handle_tick(ctx: Context, event: CloudEvent) -> CloudEvent | None:
    """Mail what is pending; publishes directly (one tick may mail many)."""
    sender = await system_sender(ctx.pool, ctx.settings)
    if sender is None and ctx.settings.system_mail:
        log_event(
            logger, "system project not found", logging.ERROR, project_id=ctx.settings.system_project_id
        )
        return None  # left pending: mailed once the project exists
    stored: list[MessageEvent] = []
    async with ctx.pool.acquire() as conn, conn.transaction():
        for item in await notifications.claim_to_mail(conn, BATCH):
            if sender is None or not item.recipients:
                await notifications.mark_mailed(conn, item.id, None)
                continue
            message = system_message(
                ctx.settings,
                sender,
                item.recipients,
                f"[Remails] {item.subject}",
                notification_text(item),
                label=item.kind,
                metadata={"notification_id": str(item.id)},
            )
            await store_system_mail(conn, ctx.settings, message)
            await notifications.mark_mailed(conn, item.id, message.id)
            stored.append(
                MessageEvent(
                    message_id=message.id,
                    organization_id=sender.organization_id,
                    project_id=sender.project_id,
                )
            )
            log_event(
                logger, "notification mailed", notification_id=item.id, kind=item.kind, message_id=message.id
            )
    for data in stored:
        try:
            await ctx.publisher.publish(make_event(EventType.MESSAGE_RECEIVED, data))
        except Exception as exc:  # stored; the sweep re-emits what this missed
            log_event(
                logger,
                "publish failed",
                logging.WARNING,
                message_id=data.message_id,
                error=type(exc).__name__,
            )
    return None
