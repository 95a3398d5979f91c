"""DKIM's private-key operations in a child process (signing_worker.py), off the sender's
event loop.

Why a process: the RSA-2048 signature is the largest single cost of a message in the sender's
event loop (~0.3 ms, 15 % of its CPU under load) while the other core has room. A thread does
not help: OpenSSL releases the GIL while it signs, but handing the GIL back and forth with the
busy event loop cost more than the signature (measured: 12 % fewer messages a second). Handed to
a process, the loop pays a pipe write and read (~0.05 ms).

Nothing depends on the process: while it is not running (it failed to start, died, or did not
answer within `timeout`), signatures are made in the event loop as before, and it is started
again at most every RESTART_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import sys
import time

from remails.log import log_event
from remails_sender_node.dkim_signer import DkimSigner
from remails_sender_node.signing_worker import HEADER_IN, HEADER_OUT, KEY_ID

__all__ = ["SigningProcess"]

logger = logging.getLogger("remails.sender")

RESTART_SECONDS = 5.0
KEYS_KEPT = 2000  # keys the worker holds; past this both sides start over


class SigningProcess:
    def __init__(self, *, timeout: float = 5.0, restart_seconds: float = RESTART_SECONDS) -> None:
        self.timeout = timeout
        self.restart_seconds = restart_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[bytes | None], float]] = {}
        self._keys: dict[int, int] = {}  # signer's serial → key id, for the keys the worker holds
        self._requests = itertools.count(1)
        self._key_ids = itertools.count(1)
        self._started_at = -math.inf
        self.signed_here = 0  # signatures the event loop made because the worker could not

    async def start(self) -> None:
        """Start the worker (it imports in the background; requests queue in the pipe)."""
        self._started_at = time.monotonic()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "remails_sender_node.signing_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # services log JSON lines; it has nothing to say
            )
        except OSError as exc:
            log_event(logger, "signing process did not start", logging.WARNING, error=type(exc).__name__)
            return
        self._keys.clear()
        self._reader = asyncio.create_task(self._read(self._process))
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        process, self._process = self._process, None
        for task in (self._watchdog, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watchdog = self._reader = None
        self._lost()
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def sign(self, signer: DkimSigner, digest: bytes) -> bytes:
        """`digest` signed with `signer`'s key: by the worker when it runs, else here."""
        raw = await self._ask(signer, digest)
        if raw is None:
            self.signed_here += 1
            return signer.sign_digest(digest)
        return raw

    async def _ask(self, signer: DkimSigner, digest: bytes) -> bytes | None:
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            if time.monotonic() - self._started_at >= self.restart_seconds:
                await self.start()
            return None
        stdin = process.stdin
        if stdin.is_closing():
            return None
        key_id = self._keys.get(signer.serial)
        if key_id is None:
            if len(self._keys) >= KEYS_KEPT:
                stdin.write(HEADER_IN.pack(b"C", 0, 0))
                self._keys.clear()
            key_id = self._keys[signer.serial] = next(self._key_ids)
            der = signer.private_der()
            stdin.write(HEADER_IN.pack(b"K", key_id, len(der)) + der)
        request = next(self._requests) & 0xFFFFFFFF
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending[request] = (future, time.monotonic())
        payload = KEY_ID.pack(key_id) + digest
        stdin.write(HEADER_IN.pack(b"S", request, len(payload)) + payload)
        return await future

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Settle the requests as their answers arrive; all of them at once when it ends."""
        stdout = process.stdout
        buffer = b""
        try:
            while stdout is not None and (chunk := await stdout.read(65536)):
                buffer += chunk
                while len(buffer) >= HEADER_OUT.size:
                    request, status, length = HEADER_OUT.unpack_from(buffer)
                    end = HEADER_OUT.size + length
                    if len(buffer) < end:
                        break
                    answer, buffer = buffer[HEADER_OUT.size : end], buffer[end:]
                    waiting = self._pending.pop(request, None)
                    if waiting is not None and not waiting[0].done():
                        waiting[0].set_result(answer if status == 0 else None)
        finally:
            if self._process is process:
                log_event(logger, "signing process ended", logging.WARNING, exit_status=process.returncode)
                self._process = None
                self._lost()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    def _lost(self) -> None:
        """Every open request is signed here instead."""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_result(None)

    async def _watch(self) -> None:
        """A worker that stopped answering is killed; its requests are signed here."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout))
            oldest = next(iter(self._pending.values()), None)
            process = self._process
            if oldest is not None and process is not None and time.monotonic() - oldest[1] > self.timeout:
                log_event(logger, "signing process stopped answering", logging.WARNING)
                self._process = None
                self._lost()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
