"""The Knative bus: POST binary-mode CloudEvents to the sink a SinkBinding gives us (`K_SINK`)."""

from __future__ import annotations

import os

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from remails.errors import ConfigError

__all__ = ["KnativePublisher"]


class KnativePublisher:
    def __init__(self, sink: str | None = None, *, timeout: float = 10.0) -> None:
        url = sink or os.environ.get("K_SINK")
        if not url:
            raise ConfigError(
                "K_SINK: not set; the knative bus posts its events there (the Broker's address)"
            )
        self.sink = url
        self._client = httpx.AsyncClient(timeout=timeout)

    async def publish(self, event: CloudEvent) -> None:
        headers, body = to_binary(event)
        response = await self._client.post(self.sink, headers=headers, content=body)
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()
