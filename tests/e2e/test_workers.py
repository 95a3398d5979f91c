"""`remails up` with REMAILS_WORKERS=2: worker processes share the SMTP port and the database,
both accept SMTP, and every accepted message is delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.conftest import World
from tests.support.sink import free_port
from tests.support.wait import wait_until

MESSAGES = 16


async def test_two_workers_share_the_port_and_deliver_everything(world: World, tmp_path: Path) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    creator = await world.runtime(outbound_ips="127.0.0.9")  # only to create the tenant
    tenant = await world.tenant(creator, "example.test")
    await creator.stop()
    world.runtimes.remove(creator)
    settings = world.settings()
    submission, api = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = {
        **os.environ,
        "REMAILS_WORKERS": "2",
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_HOSTNAME": "mx.remails.test",
        "REMAILS_SMTP_SUBMISSION_LISTEN": f"127.0.0.1:{submission}",
        "REMAILS_SMTP_TLS_LISTEN": f"127.0.0.1:{free_port('127.0.0.1')}",
        "REMAILS_SMTP_MX_LISTEN": f"127.0.0.1:{free_port('127.0.0.1')}",
        "REMAILS_HTTP_LISTEN": f"127.0.0.1:{api}",
        "REMAILS_TLS_CERT": str(settings.tls_cert),
        "REMAILS_TLS_KEY": str(settings.tls_key),
        "REMAILS_DNS_SERVERS": world.dns.servers,
        "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        "REMAILS_DELIVERY_PORT": str(world.sink_port),
        "REMAILS_HEARTBEAT_SECONDS": "0.5",
    }
    log = (tmp_path / "workers.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "remails.cli", "up", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log
    )
    try:

        async def api_up() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{api}/healthz", timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(api_up, bound=60)
        # Each connection is a new source port: SO_REUSEPORT hashes them over both workers'
        # sockets (all 16 on one worker: a chance of 2 in 65,536).
        for i in range(MESSAGES):
            await world.submit(submission, tenant, [f"u{i}@dest.test"], subject=str(i))
        await wait_until(lambda: len(sink.received) == MESSAGES, bound=30)
        conn = await asyncpg.connect(str(settings.database_url))
        try:

            async def all_delivered() -> bool:
                delivered = await conn.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'")
                return bool(delivered == MESSAGES)

            await wait_until(all_delivered)
            nodes = {r["name"] for r in await conn.fetch("SELECT name FROM sender_nodes")}
        finally:
            await conn.close()
        assert {"mx.remails.test-0", "mx.remails.test-1"} <= nodes
        expected = sorted(f"u{i}@dest.test" for i in range(MESSAGES))
        assert sorted(r.rcpt_tos[0] for r in sink.received) == expected
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        log.close()
    assert process.returncode == 0
    # Both workers accepted SMTP: each logs the messages it took, with its worker index.
    accepted_by = [
        e.get("worker") for e in _log_entries(tmp_path / "workers.log") if e["msg"] == "message received"
    ]
    assert len(accepted_by) == MESSAGES
    assert set(accepted_by) == {0, 1}


def _log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "msg" in entry:
                entries.append(entry)
    return entries
