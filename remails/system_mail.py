"""System mail: the operator's own messages (notifications, invitations, password resets),
stored in the system project (REMAILS_SYSTEM_PROJECT_ID) from REMAILS_SYSTEM_FROM.

A stored system message is an ordinary message: the caller emits `message.received` after
its transaction commits, and validation, quota, DKIM signing, retries and the message log
follow as for any customer's. With either setting unset, system mail is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from uuid import UUID, uuid4

from remails.config import Settings
from remails.db import Pool, orgs
from remails.db.messages import NewMessage, insert_message
from remails.db.rows import Executor
from remails.message_headers import received_header

__all__ = ["SystemSender", "store_system_mail", "system_message", "system_sender"]

DISPLAY_NAME = "Remails"


@dataclass(frozen=True)
class SystemSender:
    organization_id: UUID
    project_id: UUID
    address: str


async def system_sender(pool: Pool, settings: Settings) -> SystemSender | None:
    """The system project and sender; None when system mail is off or the project is gone."""
    if settings.system_project_id is None or settings.system_from is None:
        return None
    project = await orgs.get_project(pool, settings.system_project_id)
    if project is None:
        return None
    return SystemSender(project.organization_id, project.id, settings.system_from)


def system_message(
    settings: Settings,
    sender: SystemSender,
    recipients: list[str],
    subject: str,
    text: str,
    *,
    label: str | None = None,
    metadata: dict[str, str] | None = None,
    now: datetime | None = None,
) -> NewMessage:
    """A plain-text message from the system sender, marked auto-generated (RFC 3834) so that
    vacation responders stay quiet."""
    now = now or datetime.now(UTC)
    message_id = uuid4()
    header = f"<{message_id}@{settings.hostname}>"
    mail = EmailMessage(policy=SMTP)
    local, _, domain = sender.address.rpartition("@")
    mail["From"] = Address(DISPLAY_NAME, local, domain)
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = subject
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = header
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(text)
    trace = received_header(by=settings.hostname, protocol="HTTP", message_id=str(message_id), now=now)
    raw = (trace + "\r\n").encode() + mail.as_bytes()
    return NewMessage(
        sender.organization_id,
        sender.project_id,
        sender.address,
        recipients,
        raw,
        header,
        label=label,
        metadata=metadata or {},
        id=message_id,
    )


async def store_system_mail(conn: Executor, settings: Settings, message: NewMessage) -> UUID:
    """Store it (inside the caller's transaction); the caller emits message.received after."""
    return await insert_message(conn, message, settings.message_lifetime_seconds)
