"""What every role needs at run time: settings, the pool, the publisher, the master key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from remails.bus import Publisher
from remails.config import Settings, load_settings
from remails.crypto import MasterKey
from remails.db import Pool
from remails.errors import ConfigError

__all__ = ["Context", "function_context"]


@dataclass(frozen=True)
class Context:
    settings: Settings
    pool: Pool  # durable commits: accepting a message, management
    publisher: Publisher
    master_key: MasterKey
    pipeline_pool: Pool | None = None

    @property
    def pipeline(self) -> Pool:
        """Connections for pipeline state transitions, committed asynchronously. A transition
        lost to a database crash (the last ~0.2 s) is redone by the sweep; the message itself
        was committed durably before its 250, so nothing is lost, at worst sent twice."""
        return self.pipeline_pool or self.pool


_function_context: Context | None = None
_function_lock = asyncio.Lock()


async def function_context() -> Context:
    """The context of a function process under functions-framework, built once from the
    environment: the database URL is required, events go to the Broker through K_SINK."""
    global _function_context
    async with _function_lock:
        if _function_context is None:
            from remails.bus.knative import KnativePublisher
            from remails.crypto import load_master_key
            from remails.db import create_pool

            settings = load_settings()
            if settings.database_url is None:
                raise ConfigError("REMAILS_DATABASE_URL: must be set for a function")
            pool = await create_pool(settings.database_url, max_size=2)
            pipeline_pool = await create_pool(settings.database_url, max_size=5, durable=False)
            master_key = load_master_key(settings.secret_key, settings.data_dir)
            _function_context = Context(settings, pool, KnativePublisher(), master_key, pipeline_pool)
            from remails.metrics import serve_in_thread

            serve_in_thread(*settings.metrics_listen, {"main": pool, "pipeline": pipeline_pool})
        return _function_context
