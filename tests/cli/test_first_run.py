"""A newcomer's first run: the CLI never makes a database of its own, `remails up` says how to
run the CLI and where the operator token is on every start, and a taken port is one line."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.support.dnsserver import LocalDns


async def test_a_command_away_from_the_server_refuses_instead_of_making_a_database(
    tmp_path: Path, local_dns: LocalDns
) -> None:
    elsewhere = Cli(None, Path(".remails"), local_dns, tmp_path)  # the default data dir, here
    line = await elsewhere.refused("org", "create", "Acme")
    assert line.startswith(f"remails: no database in {tmp_path / '.remails' / 'postgres'}")
    assert "REMAILS_DATA_DIR" in line and "remails up" in line
    assert not (tmp_path / ".remails").exists()  # nothing was created
    zero = "00000000-0000-0000-0000-000000000000"
    for args in (("org", "list"), ("status",), ("message", "list"), ("suppression", "list", zero)):
        assert (await elsewhere.refused(*args)).startswith("remails: no database in ")
    assert not (tmp_path / ".remails").exists()


async def test_version() -> None:
    result = await asyncio.to_thread(
        __import__("subprocess").run,
        [sys.executable, "-m", "remails.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    from importlib.metadata import version

    assert result.stdout.strip() == f"remails {version('remails')}"


class Up:
    """`remails up` in a subprocess on the test database, every listener on a free port."""

    def __init__(self, dsn: str, data_dir: Path, cwd: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "REMAILS_DATABASE_URL": dsn,
            "REMAILS_DATA_DIR": str(data_dir),
            "REMAILS_SMTP_SUBMISSION_LISTEN": "127.0.0.1:0",
            "REMAILS_SMTP_TLS_LISTEN": "127.0.0.1:0",
            "REMAILS_SMTP_MX_LISTEN": "127.0.0.1:0",
            "REMAILS_HTTP_LISTEN": "127.0.0.1:0",
            "REMAILS_METRICS_LISTEN": "127.0.0.1:0",
            "REMAILS_OUTBOUND_IPS": "127.0.0.2",
            **env,
        }
        self.cwd = cwd

    async def banner(self) -> str:
        """Start, read stderr up to the banner's last line, stop; return the non-log lines."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "remails.cli",
            "up",
            env=self.env,
            cwd=self.cwd,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert process.stderr is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(60):
                while not any(" status " in line for line in lines):
                    raw = await process.stderr.readline()
                    assert raw, "remails up exited before its banner: " + "\n".join(lines)
                    line = raw.decode().rstrip("\n")
                    if not line.startswith("{"):
                        lines.append(line)
        finally:
            process.terminate()
            await process.wait()
        return "\n".join(lines)

    async def run_to_end(self) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "remails.cli",
            "up",
            env=self.env,
            cwd=self.cwd,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(60):
            _, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, err.decode()


async def test_the_banner_names_the_cli_and_the_token_on_every_start(dsn: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = await Up(dsn, data, tmp_path).banner()
    token_file = data.resolve() / "admin-token"
    assert f"operator API token          in {token_file}" in first
    assert token_file.read_text().strip() in first  # the new token, shown once
    # Started as `python -m remails.cli`: the banner says so, not a bare `remails`.
    assert f"{sys.executable} -m remails.cli org create Acme" in first or "-m remails.cli org create" in first
    assert "the same REMAILS_* settings" in first
    again = await Up(dsn, data, tmp_path).banner()
    assert f"operator API token          in {token_file}" in again
    assert token_file.read_text().strip() not in again  # shown once only


@pytest.fixture
async def taken_port() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("setting", ["REMAILS_SMTP_SUBMISSION_LISTEN", "REMAILS_HTTP_LISTEN"])
async def test_a_port_in_use_is_one_line_naming_the_setting(
    dsn: str, tmp_path: Path, taken_port: int, setting: str
) -> None:
    code, err = await Up(
        dsn, tmp_path / "data", tmp_path, **{setting: f"127.0.0.1:{taken_port}"}
    ).run_to_end()
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"remails: {setting}: 127.0.0.1:{taken_port} is already in use"), err
