"""schemathesis against the real API (uvicorn, PostgreSQL): no 5xx, responses match the schema.

Bounded in examples and time; runs as a separate process so the server keeps this event loop.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

from remails.http_server import HttpServer
from remails_functions.api import create_app
from tests.api.conftest import Api


async def test_schemathesis_finds_no_server_errors_and_no_schema_mismatch(api: Api, tmp_path: Path) -> None:
    app = api.client._transport.app  # type: ignore[attr-defined]  # the app behind the test client
    assert app.state.ctx.settings is api.settings
    server = HttpServer(create_app(app.state.ctx), "127.0.0.1", 0)
    server_app: Any = server._server.config.app
    server_app.state.rate_limits.rate = 10_000.0
    server_app.state.rate_limits.burst = 10_000
    await server.start()
    host, port = server.address
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert st is not None
    try:
        process = await asyncio.create_subprocess_exec(
            st,
            "run",
            f"http://{host}:{port}/openapi.json",
            "--header",
            f"Authorization: Bearer {api.acme_admin}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "10",
            "--max-time",
            "40",
            "--seed",
            "7",
            "--workers",
            "1",
            "--phases",
            "examples,fuzzing",  # coverage phase: schemathesis crashes in ast on 3.11
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path),
            "--warnings",
            "off",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its example cache (.schemathesis/) stays out of the checkout
        )
        output, _ = await asyncio.wait_for(process.communicate(), 150)
    finally:
        await server.stop()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "passed" in text.lower()
