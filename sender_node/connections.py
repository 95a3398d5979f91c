"""An open SMTP connection from an egress source to one MX address, as the ready queue of its
(egress IP, site) keeps it between transactions (like Postfix's scache: no new TCP, TLS and
EHLO for every message to a site), and the connection slot it holds."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import aiosmtplib

__all__ = ["CachedConnection", "PathKey", "Slot"]

PathKey = tuple[str, str, int]  # (source IP, MX address, port)


@dataclass(frozen=True)
class Slot:
    """One of the (egress IP, site)'s `max_connections`, held in the database by this process."""

    number: int
    token: UUID


@dataclass
class CachedConnection:
    client: aiosmtplib.SMTP
    tls_version: str | None
    opened_at: float
    idle_since: float = 0.0
    # For the attempt log: the TLS version, or why the connection is in cleartext
    # ("none, handshake failed: …"); None when the MX offered no STARTTLS.
    tls_note: str | None = None
    path: PathKey | None = None
    verified: bool = False  # opened under a policy that demanded verified TLS (MTA-STS)
    messages: int = 0  # transactions on it so far
    slot: Slot | None = None  # while idle: the slot it holds (a busy one's is its ticket's)
