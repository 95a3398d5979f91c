"""The benchmark tools keep working: both run on a tiny load and print their JSON."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(ROOT / "bench" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=400,
    )


async def test_relay_runs_remails_and_postfix_side_by_side() -> None:
    result = await _run("relay", "--messages", "50", "--concurrency", "5", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    for side in ("remails", "postfix"):
        assert figures[side]["delivered"] == 50, figures
        for key in ("accept_per_s", "e2e_per_s", "p50_ms", "p99_ms", "cpu_s", "peak_rss_mb"):
            assert figures[side][key] > 0, (side, key, figures)
    assert figures["ratio_e2e"] > 0
    # Two rounds a side by default, in alternating order; each round's rate is reported.
    assert len(figures["rounds_e2e_per_s"]) == 2, figures
    assert all(r["remails"] > 0 and r["postfix"] > 0 for r in figures["rounds_e2e_per_s"]), figures


async def test_relay_runs_remails_on_a_postgresql_server_of_its_own(tmp_path: Path) -> None:
    """--database server: the messages go through a server the bench started on 127.0.0.1
    (its data directory holds them), and no embedded one is created."""
    result = await _run(
        "relay",
        "--only",
        "remails",
        "--database",
        "server",
        "--messages",
        "30",
        "--concurrency",
        "3",
        "--rounds",
        "1",
        "--keep",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["remails"]["delivered"] == 30
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("work directory: ")]
    workdir = Path(line.removeprefix("work directory: "))
    run = workdir / "remails-1"  # the first (only) round's directory
    try:
        assert (run / "pg-server" / "PG_VERSION").exists()
        assert not (run / "remails-data" / "postgres").exists()
        assert "127.0.0.1" in (run / "pg-server" / "postmaster.opts").read_text()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_faults_kills_the_runtime_and_loses_nothing() -> None:
    result = await _run("faults", "--messages", "50", "--concurrency", "5", "--seed", "3", "--json")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    counts = json.loads(result.stdout)
    assert counts["accepted"] == 50
    assert counts["lost"] == 0 and counts["delivered_unique"] == 50
    assert counts["duplicates"] >= 0


async def test_edge_memory_measures_the_edge_under_large_messages() -> None:
    result = await _run("edge_memory", "--messages", "2", "--size-mb", "2", "--json")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["accepted"] == 2
    assert figures["peak_rss_mb"] >= figures["idle_rss_mb"] > 0


async def test_edge_cpu_measures_the_edge_alone() -> None:
    result = await _run("edge_cpu", "--messages", "50", "--concurrency", "5", "--json")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["messages"] == 50 and figures["accept_per_s"] > 0
    assert figures["python_ms_per_message"] > 0 and figures["postgres_ms_per_message"] > 0
