"""What every role needs at run time: settings, the pool, the publisher, the master key."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from remails.bus import Publisher
from remails.config import Settings
from remails.crypto import MasterKey

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    settings: Settings
    pool: asyncpg.Pool  # durable commits: accepting a message, management
    publisher: Publisher
    master_key: MasterKey
    pipeline_pool: asyncpg.Pool | None = None

    @property
    def pipeline(self) -> asyncpg.Pool:
        """Connections for pipeline state transitions, committed asynchronously. A transition
        lost to a database crash (the last ~0.2 s) is redone by the sweep; the message itself
        was committed durably before its 250, so nothing is lost, at worst sent twice."""
        return self.pipeline_pool or self.pool
