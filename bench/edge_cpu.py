"""CPU per message of the SMTP edge alone: the edge in a child process (embedded PostgreSQL,
events dropped, as `bench/edge_memory` runs it) under Postfix's smtp-source — a new connection
per message, 4 KB each — and the CPU seconds of the edge process and of PostgreSQL from /proc.

    bench/edge_cpu                    # 3,000 messages, 20 sessions
    bench/edge_cpu --messages 5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import children, ensure_debian_tools, free_port, smtp_source, tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200  # messages before the measurement: pools opened, code paths warm


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for child in children(pid):
        found |= {child} | _descendants(child)
    return found


def run(messages: int, concurrency: int, bound: float) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="remails-edge-cpu-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMAILS_")}
        env |= {k: v for k, v in os.environ.items() if k.startswith("REMAILS_SMTP_ACCEPT_")}
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.edge_memory", "--serve", tmp, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            if child.stdout is None or child.stdin is None:
                raise SystemExit("the edge process has no pipes")
            if child.stdout.readline().strip() != b"ready":
                raise RuntimeError("the edge did not start")
            smtp_source(port, WARM_UP, 4096, concurrency, False, bound)
            postgres = int((Path(tmp) / "postgres" / "postmaster.pid").read_text().split()[0])
            # The embedded PostgreSQL is the edge's child: count it once, on its own line.
            inside = postgres in _descendants(child.pid)

            def cpu() -> tuple[float, float]:
                pg = tree_cpu_seconds(postgres)
                return tree_cpu_seconds(child.pid) - (pg if inside else 0.0), pg

            py0, pg0 = cpu()
            seconds = smtp_source(port, messages, 4096, concurrency, False, bound)
            py1, pg1 = cpu()
        finally:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
    python_ms, postgres_ms = (py1 - py0) / messages * 1000, (pg1 - pg0) / messages * 1000
    return {
        "messages": messages,
        "accept_per_s": round(messages / seconds, 1),
        "python_ms_per_message": round(python_ms, 3),
        "postgres_ms_per_message": round(postgres_ms, 3),
        "total_ms_per_message": round(python_ms + postgres_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20, help="smtp-source sessions")
    parser.add_argument("--bound", type=float, default=600.0, help="seconds for the load at most")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ensure_debian_tools()
    result = run(args.messages, args.concurrency, args.bound)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:26} {value}")


if __name__ == "__main__":
    main()
