"""DKIM's private-key operations in a child process (signing_worker.py), off the sender's
event loop.

Why a process: the RSA-2048 signature is the largest single cost of a message in the sender's
event loop (~0.3 ms, 15 % of its CPU under load) while the other core has room. A thread does
not help: OpenSSL releases the GIL while it signs, but handing the GIL back and forth with the
busy event loop cost more than the signature (measured: 12 % fewer messages a second). Handed to
a process, the loop pays a pipe write and read (~0.05 ms).

Nothing depends on the process: while it is not running (it failed to start, died, or answered
nothing for `timeout` while asked), signatures are made in the event loop as before, and it is
started again at most every RESTART_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass

from remails import metrics
from remails.log import log_event
from remails_sender_node.dkim_signer import DkimSigner
from remails_sender_node.signing_worker import HEADER_IN, HEADER_OUT, KEY_ID

__all__ = ["SigningProcess"]

logger = logging.getLogger("remails.sender")

RESTART_SECONDS = 5.0
KEYS_KEPT = 2000  # keys the worker holds; past this both sides start over
# What the worker's environment keeps of ours: enough to run Python, none of our secrets.
_ENVIRONMENT = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL")


@dataclass
class _Request:
    future: asyncio.Future[bytes | None]
    process: asyncio.subprocess.Process  # the worker it was sent to


class SigningProcess:
    def __init__(self, *, timeout: float = 5.0, restart_seconds: float = RESTART_SECONDS) -> None:
        self.timeout = timeout
        self.restart_seconds = restart_seconds
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pending: dict[int, _Request] = {}
        self._answered_at = 0.0  # the worker's last answer, or when it was asked with none open
        self._closed = False
        self._keys: dict[int, int] = {}  # signer's serial → key id, for the keys the worker holds
        self._requests = itertools.count(1)
        self._key_ids = itertools.count(1)
        self._started_at = -math.inf
        self.signed_here = 0  # signatures the event loop made because the worker could not

    async def start(self) -> None:
        """Start the worker (it imports in the background; requests queue in the pipe)."""
        self._closed = False
        await self._spawn()

    async def _spawn(self) -> None:
        self._started_at = time.monotonic()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # the working directory is not on its import path: it holds every key
                "-m",
                "remails_sender_node.signing_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,  # services log JSON lines; it has nothing to say
                env={name: os.environ[name] for name in _ENVIRONMENT if name in os.environ},
            )
        except OSError as exc:
            log_event(logger, "signing process did not start", logging.WARNING, error=type(exc).__name__)
            return
        self._keys.clear()
        self._reader = asyncio.create_task(self._read(self._process))
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._closed = True  # nothing asked from now on starts another worker
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
            metrics.DKIM_SIGNED_IN_LOOP.inc()
            return signer.sign_digest(digest)
        return raw

    async def _ask(self, signer: DkimSigner, digest: bytes) -> bytes | None:
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            if not self._closed and time.monotonic() - self._started_at >= self.restart_seconds:
                await self._spawn()
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
        if not self._pending:
            self._answered_at = time.monotonic()  # its silence counts from now
        self._pending[request] = _Request(future, process)
        payload = KEY_ID.pack(key_id) + digest
        stdin.write(HEADER_IN.pack(b"S", request, len(payload)) + payload)
        return await future

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Settle the requests as their answers arrive; the rest of this worker's when it ends."""
        stdout = process.stdout
        buffer = b""
        try:
            while stdout is not None and (chunk := await stdout.read(65536)):
                self._answered_at = time.monotonic()
                buffer += chunk
                offset = 0
                while len(buffer) - offset >= HEADER_OUT.size:
                    request, status, length = HEADER_OUT.unpack_from(buffer, offset)
                    start = offset + HEADER_OUT.size
                    if len(buffer) < start + length:
                        break
                    answer, offset = buffer[start : start + length], start + length
                    waiting = self._pending.pop(request, None)
                    if waiting is not None and not waiting.future.done():
                        waiting.future.set_result(answer if status == 0 else None)
                buffer = buffer[offset:]
        finally:
            if self._process is process:
                log_event(logger, "signing process ended", logging.WARNING, exit_status=process.returncode)
            self._drop(process)

    def _drop(self, process: asyncio.subprocess.Process) -> None:
        """This worker is done with: killed, its open requests signed here."""
        if self._process is process:
            self._process = None
        self._lost(process)
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _lost(self, process: asyncio.subprocess.Process | None = None) -> None:
        """The open requests (of `process`, or all) are signed here instead."""
        lost = [r for r, req in self._pending.items() if process is None or req.process is process]
        for request in lost:
            future = self._pending.pop(request).future
            if not future.done():
                future.set_result(None)

    async def _watch(self) -> None:
        """A worker that answers nothing for `timeout` while asked is killed (a busy one that
        keeps answering is not); its requests are signed here."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout))
            process = self._process
            if process is None or not self._pending or time.monotonic() - self._answered_at <= self.timeout:
                continue
            log_event(logger, "signing process stopped answering", logging.WARNING)
            self._drop(process)
