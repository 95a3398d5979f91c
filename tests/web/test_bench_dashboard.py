"""bench/dashboard keeps working: a tiny log, every page answered and timed, plans printed."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_dashboard_bench_runs_on_a_small_log() -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(ROOT / "bench" / "dashboard"), "--messages", "3000", "--repeat", "3", "--plans", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["messages"] == 3000
    for name in ("messages", "messages_status", "messages_recipient", "message", "statistics"):
        assert figures["pages"][name]["p95_ms"] > 0, name
    assert "Index" in figures["plans"]["list"]
