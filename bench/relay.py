"""bench/relay: the same load through Remails and through Postfix, side by side.

smtp-source pushes N messages (default 5,000 messages of 4 KB, 20 sessions) into each relay; each
relays to a sink on loopback (Postfix's smtp-sink, or a failing/slow sink with
--sink-fail/--sink-delay). Prints accept and end-to-end throughput, accept→delivered latency,
CPU seconds and peak memory, and the ratios. `--json` prints one object.

The sides run one after the other, in rounds of alternating order (remails, postfix; then
postfix, remails; ...): this machine's speed drifts by tens of percent over a minute, and a fixed
order hands one side the faster phase. Each side's figures are over all its rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    Postfix,
    PostgresServer,
    PySink,
    Remails,
    Sink,
    SmtpSink,
    descendants,
    ensure_debian_tools,
    free_port,
    latencies_ms,
    local_dns,
    paced_load,
    peak_rss_mb,
    percentile,
    smtp_source,
    wait_for_sink,
    workspace,
)

KEYS = ("accept_per_s", "e2e_per_s", "p50_ms", "p99_ms", "cpu_s", "peak_rss_mb")


def _sink(args: argparse.Namespace, ip: str, workdir: Path) -> Sink:
    port = free_port(ip)
    if args.sink_fail or args.sink_delay:
        return PySink(ip, port, workdir, args.sink_fail, args.sink_delay)
    return SmtpSink(ip, port, workdir)


@dataclass
class Run:
    """One side's measurements of one round."""

    messages: int
    accept_s: float
    e2e_s: float | None  # None: not every message reached the sink within the bound
    latencies_ms: list[float]
    cpu_s: float
    peak_rss_mb: float


def _rate(run: Run) -> float:
    return round(run.messages / run.e2e_s, 1) if run.e2e_s else 0.0


def _figures(runs: list[Run]) -> dict[str, Any]:
    """One side's figures over its rounds: rates from the summed messages and seconds, latency
    percentiles of all messages, CPU seconds per round, the highest peak memory."""
    n = sum(r.messages for r in runs)
    complete = all(r.e2e_s for r in runs)
    lat = [ms for r in runs for ms in r.latencies_ms]
    return {
        "accept_per_s": round(n / sum(r.accept_s for r in runs), 1),
        "e2e_per_s": round(n / sum(r.e2e_s or 0.0 for r in runs), 1) if complete else 0.0,
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "cpu_s": round(sum(r.cpu_s for r in runs) / len(runs), 2),
        "cpu_ms_per_message": round(1000 * sum(r.cpu_s for r in runs) / n, 2),
        "peak_rss_mb": round(max(r.peak_rss_mb for r in runs), 1),
        "delivered": round(len(lat) / len(runs)),
    }


def _retry_env(args: argparse.Namespace) -> dict[str, str]:
    if not (args.sink_fail or args.sink_delay):
        return {}
    return {
        "REMAILS_RETRY_FIRST_SECONDS": "1",
        "REMAILS_RETRY_MAX_SECONDS": "4",
        "REMAILS_TICK_SECONDS": "0.5",
    }


def _load(args: argparse.Namespace, port: int) -> float:
    if args.rate:
        return paced_load(port, args.messages, args.size, args.rate, args.bound)
    return smtp_source(port, args.messages, args.size, args.concurrency, args.reuse, args.bound)


def run_remails(args: argparse.Namespace, workdir: Path) -> Run:
    sink_ip = "127.0.0.20"
    sink = _sink(args, sink_ip, workdir)
    dns = local_dns(sink_ip)
    database = PostgresServer(workdir) if args.database == "server" else None
    remails = Remails(
        workdir,
        dns,
        sink.port,
        extra_env={
            **_retry_env(args),
            "REMAILS_WORKERS": str(args.workers),
            **({"REMAILS_SENDER_PROCESS": args.sender_process} if args.sender_process else {}),
        },
        database=database,
    )
    try:
        if database is not None:
            database.start()
        remails.start(remails.setup_tenant())
        cpu_before = remails.cpu_seconds()
        started = time.monotonic()
        accept_s = _load(args, remails.port)
        waited = wait_for_sink(sink, args.messages, args.bound)
        e2e_s = time.monotonic() - started if waited is not None else None
        cpu = remails.cpu_seconds() - cpu_before
        pid = remails.process.pid if remails.process is not None else None
        rss = sum(peak_rss_mb(p) for p in [pid, *descendants(pid)]) if pid is not None else 0.0
        deadline = time.monotonic() + 30
        lat = latencies_ms(remails.dsn)
        while len(lat) < min(args.messages, sink.count()) and time.monotonic() < deadline:
            time.sleep(0.2)  # the sink said 250 a moment before the retry function recorded it
            lat = latencies_ms(remails.dsn)
        return Run(args.messages, accept_s, e2e_s, lat, cpu, rss)
    finally:
        remails.stop()
        if database is not None:
            database.stop()
        sink.stop()
        dns.stop()


def run_postfix(args: argparse.Namespace, workdir: Path) -> Run:
    sink_ip = "127.0.0.21"
    sink = _sink(args, sink_ip, workdir)
    postfix = Postfix(
        workdir, free_port(), sink_ip, sink.port, fast_retry=bool(args.sink_fail or args.sink_delay)
    )
    try:
        postfix.start()
        cpu_before = postfix.cpu_seconds()
        started = time.monotonic()
        accept_s = _load(args, postfix.port)
        waited = wait_for_sink(sink, args.messages, args.bound)
        e2e_s = time.monotonic() - started if waited is not None else None
        cpu = postfix.cpu_seconds() - cpu_before
        time.sleep(1.0)  # postlogd writes the last lines a moment later
        return Run(args.messages, accept_s, e2e_s, postfix.latencies_ms(), cpu, postfix.peak_rss_mb())
    finally:
        postfix.stop()
        sink.stop()


def _table(result: dict[str, Any]) -> str:
    rows = [f"{'':16}{'remails':>12}{'postfix':>12}{'ratio':>10}"]
    for key in (*KEYS, "cpu_ms_per_message", "delivered"):
        r, p = result["remails"][key], result["postfix"][key]
        ratio = f"{r / p:.2f}" if isinstance(p, int | float) and p else "-"
        rows.append(f"{key:16}{r:>12}{p:>12}{ratio:>10}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/relay", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096, help="payload bytes per message")
    parser.add_argument("--concurrency", type=int, default=20, help="smtp-source sessions")
    parser.add_argument("--reuse", action="store_true", help="keep sessions open between messages (-d)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="a steady rate (msg/s) from a paced generator instead of smtp-source's flood",
    )
    parser.add_argument(
        "--sink-fail", type=float, default=0.0, help="share of transactions the sink answers 4xx"
    )
    parser.add_argument(
        "--sink-delay", type=float, default=0.0, help="seconds the sink waits before each reply"
    )
    parser.add_argument(
        "--bound", type=float, default=600.0, help="give up on a phase after this many seconds"
    )
    parser.add_argument("--workers", type=int, default=1, help="REMAILS_WORKERS for remails up")
    parser.add_argument(
        "--sender-process",
        choices=["true", "false"],
        default=None,
        help="REMAILS_SENDER_PROCESS for remails up (default: unset, its own choice)",
    )
    parser.add_argument(
        "--database",
        choices=["embedded", "server"],
        default="embedded",
        help="server: PostgreSQL as a server of its own on 127.0.0.1 over TCP (REMAILS_DATABASE_URL)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per side, in alternating order (2: remails, postfix, postfix, remails)",
    )
    parser.add_argument("--only", choices=["remails", "postfix"], default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ensure_debian_tools()
    sides = [side for side in ("remails", "postfix") if args.only in (None, side)]
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    with workspace(args.keep) as workdir:
        for number in range(max(1, args.rounds)):
            for side in sides if number % 2 == 0 else sides[::-1]:
                where = workdir / f"{side}-{number + 1}"
                where.mkdir()
                runs[side].append((run_remails if side == "remails" else run_postfix)(args, where))
        if args.keep:
            print(f"work directory: {workdir}", file=sys.stderr)
    result: dict[str, Any] = {side: _figures(runs[side]) for side in sides}
    if len(sides) == 2:
        p = result["postfix"]["e2e_per_s"]
        result["ratio_e2e"] = round(result["remails"]["e2e_per_s"] / p, 3) if p else None
        result["rounds_e2e_per_s"] = [
            {side: _rate(runs[side][number]) for side in sides} for number in range(len(runs["remails"]))
        ]
    if args.json:
        print(json.dumps(result))
    elif len(result) >= 2:
        print(f"{args.messages} messages of {args.size} B, {args.concurrency} sessions, {args.rounds} rounds")
        print(_table(result))
        print(f"ratio_e2e (remails / postfix): {result['ratio_e2e']}")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
