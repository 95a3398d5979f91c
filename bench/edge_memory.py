"""bench/edge_memory: peak RSS of the SMTP edge while N large messages are in flight at once.

The edge runs alone in a child process (embedded PostgreSQL in a temp dir, a trusted network
for the client, events dropped); this process sends N concurrent submissions of SIZE bytes over
loopback and samples the child's RSS. It prints the growth over the idle edge, per message and
as a multiple of the message size.

    bench/edge_memory                      # 8 messages of 24 MB
    bench/edge_memory --messages 4 --size-mb 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import free_port  # noqa: E402

MB = 1_000_000


# -- the child: the edge alone ------------------------------------------------------------------


class _DropEvents:
    async def publish(self, event: Any) -> None:
        """The bench measures the edge; nothing downstream consumes the events."""


async def _serve(data_dir: Path, port: int, max_size: int) -> None:
    from remails.config import load_settings
    from remails.context import Context
    from remails.crypto import load_master_key
    from remails.db import connect, domains, orgs
    from remails.sending_domains import add_sending_domain
    from remails_smtp_edge.server import EdgeServer

    settings = load_settings(data_dir=data_dir, hostname="edge.bench.test")
    db = await connect(settings, max_size=20)
    try:
        master_key = load_master_key(None, data_dir)
        org = await orgs.create_organization(db.pool, "Bench", 1_000_000)
        project = await orgs.create_project(db.pool, org.id, "bench")
        added = await add_sending_domain(db.pool, master_key, org.id, [project.id], "bench.test")
        await domains.record_verification(db.pool, added.id, {"forced": True}, True)
        edge_settings = load_settings(
            data_dir=data_dir,
            hostname="edge.bench.test",
            smtp_submission_listen=f"127.0.0.1:{port}",
            smtp_tls_listen=f"127.0.0.1:{free_port()}",
            smtp_mx_listen=f"127.0.0.1:{free_port()}",
            trusted_networks=f"127.0.0.0/8={project.id}",
            smtp_max_message_size=max_size,
        )
        ctx = Context(edge_settings, db.pool, _DropEvents(), master_key)
        edge = EdgeServer(ctx)
        await edge.start()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
        await edge.stop(grace=5)
    finally:
        await db.close()


# -- the parent: load and measurement --------------------------------------------------------


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _message(size: int) -> bytes:
    head = b"From: app@bench.test\r\nTo: user@dest.test\r\nSubject: big\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


async def _submit(port: int, body: bytes, bound: float) -> str:
    async def talk() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:

            async def command(line: bytes) -> bytes:
                writer.write(line + b"\r\n")
                return await _reply(reader)

            await _reply(reader)
            for line in (
                b"EHLO client.bench.test",
                b"MAIL FROM:<app@bench.test>",
                b"RCPT TO:<user@dest.test>",
            ):
                reply = await command(line)
                if not reply.startswith(b"250"):
                    raise RuntimeError(f"{line!r} refused: {reply!r}")
            if not (await command(b"DATA")).startswith(b"354"):
                raise RuntimeError("DATA refused")
            writer.write(body + b".\r\n")
            reply = await _reply(reader)
            writer.write(b"QUIT\r\n")
            return reply.decode().strip()
        finally:
            writer.close()

    return await asyncio.wait_for(talk(), bound)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the edge closed the connection")
        if line[3:4] != b"-":
            return line


def run(messages: int, size: int, bound: float) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="remails-edge-memory-") as tmp:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.edge_memory", "--serve", tmp, "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if not k.startswith("REMAILS_")},
        )
        try:
            if child.stdout is None or child.stdin is None:
                raise SystemExit("the edge process has no pipes")
            ready = child.stdout.readline()
            if ready.strip() != b"ready":
                raise RuntimeError("the edge did not start")
            body = _message(size)
            asyncio.run(_submit(port, _message(64_000), bound))  # warm up the code paths once
            idle = _rss_mb(child.pid)
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, _rss_mb(child.pid))
                    done.wait(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()

            async def load() -> list[str]:
                return await asyncio.gather(*(_submit(port, body, bound) for _ in range(messages)))

            replies = asyncio.run(load())
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            peak = max(peak, _rss_mb(child.pid, "VmHWM"))
            accepted = sum(r.startswith("250") for r in replies)
        finally:
            if child.stdin is not None:
                child.stdin.close()
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
    growth = peak - idle
    size_mb = len(body) / (1024 * 1024)
    return {
        "messages": messages,
        "message_mb": round(size_mb, 1),
        "accepted": accepted,
        "seconds": round(elapsed, 2),
        "idle_rss_mb": round(idle, 1),
        "peak_rss_mb": round(peak, 1),
        "growth_mb": round(growth, 1),
        "growth_per_message_mb": round(growth / messages, 1),
        "growth_per_message_x_size": round(growth / messages / size_mb, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=24.0)
    parser.add_argument("--bound", type=float, default=300.0, help="seconds per submission at most")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        import uvloop  # the event loop `remails` runs on

        uvloop.run(_serve(args.serve, args.port, max_size=26 * 1024 * 1024))
        return
    result = run(args.messages, int(args.size_mb * MB), args.bound)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
