"""`remails up` killed with SIGKILL between accept and delivery, then started again: the
message is still delivered, exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import asyncpg

from tests.e2e.conftest import World, message_status
from tests.support.processes import kill_tree
from tests.support.sink import free_port
from tests.support.wait import wait_until


def _start(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "remails.cli", "up"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_killed_mid_delivery_then_restarted_delivers_exactly_once(world: World, tmp_path: Path) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.delay = 30.0  # the MX is slow: the runtime dies while waiting for its reply
    submission, implicit = free_port("127.0.0.1"), free_port("127.0.0.1")
    settings = world.settings()
    env = {
        **os.environ,
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_HOSTNAME": "mx.remails.test",
        "REMAILS_NODE_NAME": "node-1",
        "REMAILS_SMTP_SUBMISSION_LISTEN": f"127.0.0.1:{submission}",
        "REMAILS_SMTP_TLS_LISTEN": f"127.0.0.1:{implicit}",
        "REMAILS_SMTP_MX_LISTEN": f"127.0.0.1:{free_port('127.0.0.1')}",
        "REMAILS_HTTP_LISTEN": f"127.0.0.1:{free_port('127.0.0.1')}",
        "REMAILS_TLS_CERT": str(settings.tls_cert),
        "REMAILS_TLS_KEY": str(settings.tls_key),
        "REMAILS_DNS_SERVERS": world.dns.servers,
        "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        "REMAILS_DELIVERY_PORT": str(world.sink_port),
        "REMAILS_TICK_SECONDS": "0.2",
        "REMAILS_STUCK_AFTER_SECONDS": "2",
        "REMAILS_HEARTBEAT_SECONDS": "0.5",
        "REMAILS_RETRY_FIRST_SECONDS": "0.2",
    }
    log = (tmp_path / "remails.log").open("ab")
    process = _start(env, log)
    try:
        await wait_until(lambda: _listening(submission), bound=30)
        runtime_view = await world.runtime(smtp_submission_listen="127.0.0.1:0", outbound_ips="127.0.0.9")
        tenant = await world.tenant(runtime_view, "example.test")
        await runtime_view.stop()  # a second process only to create the tenant; it sends nothing
        world.runtimes.remove(runtime_view)

        message_id = await world.submit(submission, tenant, ["user@dest.test"], subject="once")

        await asyncio.wait_for(sink.handler.data_started.wait(), 30)
        kill_tree(process.pid)  # `remails up` and its workers
        assert await asyncio.to_thread(process.wait, 10) == -signal.SIGKILL  # mid-delivery
        assert not sink.received
        sink.handler.delay = 0.0

        process = _start(env, log)
        pool = await asyncpg.create_pool(str(settings.database_url), min_size=1, max_size=2)
        try:

            async def delivered() -> bool:
                return await message_status(pool, message_id) == "delivered"

            await wait_until(delivered, bound=30)
        finally:
            await pool.close()
        assert len(sink.received) == 1
        assert sink.received[0].rcpt_tos == ["user@dest.test"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
