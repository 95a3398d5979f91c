"""The edge's TLS context, reloaded when the certificate or key files change.

A mounted Secret renewed by cert-manager changes the files under a running edge. Each new
handshake takes the current context; sessions already encrypted keep theirs. A pair that does
not load (half-written, key not matching) is logged and the previous context stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl

from remails.config import Settings
from remails.log import log_event
from remails.tls import ensure_certificate, server_context

__all__ = ["Certificates"]

logger = logging.getLogger("remails.edge")


class Certificates:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._digest = self._files_digest()
        self.context: ssl.SSLContext = server_context(settings)
        self._task: asyncio.Task[None] | None = None

    def _files_digest(self) -> bytes:
        digest = hashlib.sha256()
        for path in ensure_certificate(self.settings):
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"missing")
            digest.update(b"\0")
        return digest.digest()

    def reload_if_changed(self) -> bool:
        """Load the pair again when its bytes changed; True when the context was replaced."""
        digest = self._files_digest()
        if digest == self._digest:
            return False
        try:
            context = server_context(self.settings)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log_event(logger, "tls certificate reload failed", logging.ERROR, error=str(exc))
            return False  # the files may still be mid-update: try again at the next check
        self._digest = digest
        self.context = context
        log_event(logger, "tls certificate reloaded")
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tls_reload_seconds)
            self.reload_if_changed()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
