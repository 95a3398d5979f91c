"""`remails up` on its embedded PostgreSQL: a killed server is started again (or `remails up`
exits non-zero within its bound), and a `remails up` killed by SIGKILL leaves no server that
the next run cannot stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import trustme

from tests.ops.spawn import Up, remails_up
from tests.smtp.conftest import tls_files
from tests.support.wait import wait_until


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def embedded_env(tmp_path: Path, ca: trustme.CA, **extra: str) -> dict[str, str]:
    cert, key = tls_files(ca, tmp_path)
    return {
        "REMAILS_DATA_DIR": str(tmp_path / "data"),
        "REMAILS_HOSTNAME": "mx.remails.test",
        "REMAILS_TLS_CERT": str(cert),
        "REMAILS_TLS_KEY": str(key),
        "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        "REMAILS_EMBEDDED_POSTGRES_CHECK_SECONDS": "0.2",
        **extra,
    }


async def stop(up: Up) -> int:
    up.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(up.process.wait(), 60)


@pytest.mark.parametrize(("workers", "sender_process"), [("1", "false"), ("1", "true"), ("2", "false")])
async def test_a_killed_embedded_postgres_is_started_again(
    tmp_path: Path, ca: trustme.CA, workers: str, sender_process: str
) -> None:
    """One process owns the server; with workers (or a sender process) the supervisor does,
    and the workers' pools reconnect."""
    pgdata = tmp_path / "data" / "postgres"
    env = embedded_env(tmp_path, ca, REMAILS_WORKERS=workers, REMAILS_SENDER_PROCESS=sender_process)
    async with remails_up(env, tmp_path / "up.log") as up:
        first = postmaster_pid(pgdata)
        assert alive(first)
        assert first is not None
        os.kill(first, signal.SIGKILL)

        async def recovered() -> bool:
            pid = postmaster_pid(pgdata)
            return pid != first and alive(pid) and await up.ready()

        await wait_until(recovered, bound=60, interval=0.2)
        assert up.process.returncode is None
        assert "embedded postgresql restarted" in up.log.read_text()
        second = postmaster_pid(pgdata)
        assert await stop(up) == 0
    assert not alive(second)  # stopped with remails up, not left behind


async def test_remails_up_exits_non_zero_when_postgres_cannot_start_again(
    tmp_path: Path, ca: trustme.CA
) -> None:
    pgdata = tmp_path / "data" / "postgres"
    env = embedded_env(tmp_path, ca, REMAILS_EMBEDDED_POSTGRES_RESTART_SECONDS="3")
    async with remails_up(env, tmp_path / "up.log") as up:
        pid = postmaster_pid(pgdata)
        assert pid is not None
        (pgdata / "PG_VERSION").rename(pgdata / "PG_VERSION.aside")  # no valid data directory now
        os.kill(pid, signal.SIGKILL)
        code = await asyncio.wait_for(up.process.wait(), 60)  # within its bound, never hanging
    assert code == 1
    log = up.log.read_text()
    assert "did not start again within 3 s" in log
    (pgdata / "PG_VERSION.aside").rename(pgdata / "PG_VERSION")


async def test_after_sigkill_the_next_run_still_stops_postgres(tmp_path: Path, ca: trustme.CA) -> None:
    pgdata = tmp_path / "data" / "postgres"
    env = embedded_env(tmp_path, ca)
    async with remails_up(env, tmp_path / "first.log") as up:
        up.process.kill()  # no clean-up: its pid stays in the server's handle list
        assert await asyncio.wait_for(up.process.wait(), 10) == -signal.SIGKILL
    server = postmaster_pid(pgdata)
    assert alive(server)  # left running, to be reused
    async with remails_up(env, tmp_path / "second.log") as again:
        assert postmaster_pid(pgdata) == server  # reused
        assert await stop(again) == 0
    await wait_until(lambda: not alive(server), bound=30)  # and stopped with the second run
