"""The signing process: DKIM's private-key operations in a child process, with the event loop
signing itself whenever that process cannot (dead, stopped, not started)."""

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest

from remails.crypto import generate_dkim_key, generate_ed25519_dkim_key
from remails_sender_node.dkim_signer import DkimSigner, SignerSet
from remails_sender_node.signing_process import SigningProcess

RSA = DkimSigner("example.test", "rm1", generate_dkim_key().private_pem)
ED25519 = DkimSigner("example.test", "rme1", generate_ed25519_dkim_key().private_pem)
DIGEST = bytes(range(32))
MESSAGE = b"From: a@example.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nbody\r\n"


async def _until(condition: Callable[[], bool], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _worker_pid(signing: SigningProcess) -> int:
    process = signing._process
    assert process is not None and process.returncode is None
    return process.pid


async def test_the_worker_makes_the_same_signatures_as_the_event_loop() -> None:
    signing = SigningProcess()
    await signing.start()
    try:
        for signer in (RSA, ED25519, RSA):  # RSA again: its key is sent once
            assert await signing.sign(signer, DIGEST) == signer.sign_digest(DIGEST)
        both = SignerSet([RSA, ED25519])
        assert await both.signature_header_by(signing.sign, MESSAGE, now=1_700_000_000) == (
            both.signature_header(MESSAGE, now=1_700_000_000)
        )
        assert signing.signed_here == 0  # every one of them came from the worker
    finally:
        await signing.stop()


async def test_a_killed_worker_is_replaced_and_meanwhile_the_loop_signs() -> None:
    signing = SigningProcess(restart_seconds=0.0)
    await signing.start()
    try:
        assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)
        first = _worker_pid(signing)
        os.kill(first, signal.SIGKILL)
        await _until(lambda: signing._process is None)  # its end was noticed
        assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)  # signed here
        assert signing.signed_here == 1
        # A new worker, which is sent the key again before signing with it.
        assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)
        assert _worker_pid(signing) != first
        assert signing.signed_here == 1
    finally:
        await signing.stop()


async def test_a_worker_that_stops_answering_is_killed_and_its_requests_signed_here() -> None:
    signing = SigningProcess(timeout=0.3, restart_seconds=3600.0)
    await signing.start()
    try:
        assert await signing.sign(ED25519, DIGEST) == ED25519.sign_digest(DIGEST)
        stopped = _worker_pid(signing)
        os.kill(stopped, signal.SIGSTOP)
        waiting = [signing.sign(RSA, DIGEST), signing.sign(ED25519, DIGEST)]
        results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert results == [RSA.sign_digest(DIGEST), ED25519.sign_digest(DIGEST)]
        assert signing.signed_here == 2
        assert signing._process is None
        await _until(lambda: _gone(stopped))
    finally:
        await signing.stop()


async def test_before_its_worker_runs_the_loop_signs() -> None:
    signing = SigningProcess()  # not started: the first request starts it and is signed here
    assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)
    assert signing.signed_here == 1
    await signing.stop()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")  # killed, not yet reaped
    except FileNotFoundError:
        return True


async def test_a_busy_worker_that_keeps_answering_is_not_killed() -> None:
    """Thousands of signatures at once (a burst of claims) take the worker longer than its
    timeout; it is answering all along, so it is left to finish them."""
    signing = SigningProcess(timeout=1.0, restart_seconds=3600.0)
    await signing.start()
    try:
        first = _worker_pid(signing)
        results = await asyncio.gather(*(signing.sign(RSA, DIGEST) for _ in range(6000)))
        assert set(results) == {RSA.sign_digest(DIGEST)}
        assert signing.signed_here == 0
        assert _worker_pid(signing) == first
    finally:
        await signing.stop()


async def test_once_stopped_nothing_starts_a_worker_again() -> None:
    signing = SigningProcess(restart_seconds=0.0)
    await signing.start()
    await signing.stop()
    assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)  # signed here
    assert signing._process is None


async def test_the_worker_gets_none_of_our_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMAILS_SECRET_KEY", "not-for-the-worker")
    monkeypatch.setenv("REMAILS_DATABASE_URL", "postgresql://u:p@127.0.0.1/db")
    signing = SigningProcess()
    await signing.start()
    try:
        names = _environment_names(_worker_pid(signing))
        assert not any(name.startswith(b"REMAILS_") for name in names), names
        assert await signing.sign(RSA, DIGEST) == RSA.sign_digest(DIGEST)
        assert signing.signed_here == 0  # it runs with what it was given
    finally:
        await signing.stop()


def _environment_names(pid: int) -> set[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return {entry.split(b"=", 1)[0] for entry in environ.read().split(b"\0") if entry}
