"""`remails up` in a subprocess, as an operator runs it, with its ports on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.sink import free_port
from tests.support.wait import wait_until


@dataclass
class Up:
    process: asyncio.subprocess.Process
    submission: int
    api: int
    metrics: int
    log: Path

    async def get(self, port: int, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{port}{path}", timeout=5)

    async def ready(self) -> bool:
        if self.process.returncode is not None:
            raise AssertionError(
                f"remails up exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
            )
        try:
            return (await self.get(self.api, "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False


@asynccontextmanager
async def remails_up(env: dict[str, str], log: Path, *, bound: float = 60) -> AsyncIterator[Up]:
    """Start `remails up` with `env` on top of ours; stop it with SIGTERM (when still running)."""
    ports = {name: free_port("127.0.0.1") for name in ("submission", "tls", "api", "metrics")}
    full = {
        **os.environ,
        "REMAILS_SMTP_SUBMISSION_LISTEN": f"127.0.0.1:{ports['submission']}",
        "REMAILS_SMTP_TLS_LISTEN": f"127.0.0.1:{ports['tls']}",
        "REMAILS_SMTP_MX_LISTEN": "127.0.0.1:0",
        "REMAILS_HTTP_LISTEN": f"127.0.0.1:{ports['api']}",
        "REMAILS_METRICS_LISTEN": f"127.0.0.1:{ports['metrics']}",
        **env,
    }
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "remails.cli", "up", env=full, stdout=asyncio.subprocess.DEVNULL, stderr=out
        )
    up = Up(process, ports["submission"], ports["api"], ports["metrics"], log)
    try:
        await wait_until(up.ready, bound=bound, interval=0.1)
        yield up
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
