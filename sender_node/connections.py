"""A cache of idle SMTP connections per egress path (source IP → MX address), reused for the
next transaction like Postfix's scache: no new TCP, TLS and EHLO for every message to a site.

Bounded: a few idle connections per path, closed after `idle_seconds` without use or
`max_age_seconds` in all.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import aiosmtplib

__all__ = ["CachedConnection", "ConnectionCache", "PathKey"]

PathKey = tuple[str, str, int]  # (source IP, MX address, port)


@dataclass
class CachedConnection:
    client: aiosmtplib.SMTP
    tls_version: str | None
    opened_at: float
    idle_since: float = 0.0
    # For the attempt log: the TLS version, or why the connection is in cleartext
    # ("none, handshake failed: …"); None when the MX offered no STARTTLS.
    tls_note: str | None = None


class ConnectionCache:
    def __init__(
        self, *, per_path: int = 20, idle_seconds: float = 5.0, max_age_seconds: float = 300.0
    ) -> None:
        self.per_path = per_path
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds
        self._idle: dict[PathKey, list[CachedConnection]] = defaultdict(list)

    def _fresh(self, c: CachedConnection, now: float) -> bool:
        return (
            c.client.is_connected
            and now - c.idle_since < self.idle_seconds
            and now - c.opened_at < self.max_age_seconds
        )

    def take(self, key: PathKey) -> CachedConnection | None:
        now = time.monotonic()
        idle = self._idle.get(key)
        while idle:
            candidate = idle.pop()
            if self._fresh(candidate, now):
                return candidate
            candidate.client.close()
        return None

    def give_back(self, key: PathKey, connection: CachedConnection) -> None:
        now = time.monotonic()
        idle = self._idle[key]
        if not connection.client.is_connected or now - connection.opened_at >= self.max_age_seconds:
            connection.client.close()
            return
        if len(idle) >= self.per_path:
            connection.client.close()
            return
        connection.idle_since = now
        idle.append(connection)

    async def close_idle(self, everything: bool = False) -> int:
        """Say QUIT on connections idle too long (all of them when stopping)."""
        now = time.monotonic()
        closed = 0
        for key in list(self._idle):
            keep = []
            for c in self._idle[key]:
                if not everything and self._fresh(c, now):
                    keep.append(c)
                    continue
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await c.client.quit(timeout=2)
                c.client.close()
                closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed
