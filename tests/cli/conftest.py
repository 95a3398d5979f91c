"""The CLI driven as a person runs it (a subprocess), and the API over HTTP, on a real
PostgreSQL and the loopback DNS server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remails.config import Settings
from remails.db import Pool
from tests.api.conftest import Api, make_api
from tests.support.dnsserver import LocalDns


class Cli:
    """`remails …` in a subprocess with the server's settings in its environment."""

    def __init__(self, dsn: str | None, data_dir: Path, dns: LocalDns, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {
            **os.environ,
            "REMAILS_DATA_DIR": str(data_dir),
            "REMAILS_DNS_SERVERS": dns.servers,
            "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        }
        if dsn is not None:
            self.env["REMAILS_DATABASE_URL"] = dsn
        self.env.pop("REMAILS_WEBHOOKS_ALLOW_PRIVATE", None)

    async def run(
        self, *args: str, env: dict[str, str | None] | None = None
    ) -> subprocess.CompletedProcess[str]:
        merged = {**self.env, **(env or {})}
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "remails.cli", *args],
            env={k: v for k, v in merged.items() if v is not None},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=90,
        )

    async def json(self, *args: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
        result = await self.run(*args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout
        parsed: dict[str, Any] = json.loads(lines[0])
        return parsed

    async def text(self, *args: str) -> str:
        """The human output of a command that succeeds."""
        result = await self.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    async def refused(self, *args: str, env: dict[str, str | None] | None = None) -> str:
        """The one line a refused command prints (no traceback); exit status 1 or 2."""
        result = await self.run(*args, env=env)
        assert result.returncode in (1, 2), (result.returncode, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]


@pytest.fixture
def cli(dsn: str, tmp_path: Path, local_dns: LocalDns) -> Cli:
    return Cli(dsn, tmp_path / "data", local_dns, tmp_path)


@pytest.fixture
async def api(pool: Pool, settings: Settings) -> AsyncIterator[Api]:
    made, client = await make_api(pool, settings)
    yield made
    await client.aclose()
