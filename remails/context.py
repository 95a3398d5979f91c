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
    pool: asyncpg.Pool
    publisher: Publisher
    master_key: MasterKey
