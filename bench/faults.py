"""bench/faults: SIGKILL the runtime three times under load, restart it, count what arrived.

A Python load generator submits N messages (each with its own Message-ID) over SMTP from a
trusted network, retrying those that did not get a 250 while the runtime was down. At the end
the sink's files are counted by Message-ID: every message that got a 250 must be there (lost
must be 0); copies beyond one are reported as duplicates. Exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from email.parser import BytesHeaderParser
from pathlib import Path

import aiosmtplib

from bench.harness import (
    SINK_DOMAIN,
    Remails,
    ensure_debian_tools,
    free_port,
    local_dns,
    wait_for_port,
    workspace,
)


class DumpSink:
    """smtp-sink writing one file per message, so copies can be counted by Message-ID."""

    def __init__(self, ip: str, port: int, workdir: Path) -> None:
        import subprocess

        self.ip, self.port = ip, port
        self.dir = workdir / "dump"
        self.dir.mkdir()
        self.dir.chmod(0o777)  # smtp-sink drops to the user `nobody`
        self.process = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-d", str(self.dir / "%H%M%S."), f"{ip}:{port}", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(ip, port, 10)

    def message_ids(self) -> Counter[str]:
        found: Counter[str] = Counter()
        parser = BytesHeaderParser()
        for path in self.dir.iterdir():
            with path.open("rb") as fh:
                message_id = parser.parse(fh)["Message-ID"]
            if message_id:
                found[message_id.strip()] += 1
        return found

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(5)


async def _generate(port: int, total: int, concurrency: int, deadline: float, accepted: set[str]) -> int:
    """Submit `total` messages; a message is counted once it got a 250. Returns the attempts."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    tries = 0
    body = ("x" * 76 + "\r\n") * 50

    async def worker() -> None:
        nonlocal tries
        client: aiosmtplib.SMTP | None = None
        while time.monotonic() < deadline:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            message_id = f"<fault-{i}@bench.test>"
            message = (
                f"From: sender@bench.test\r\nTo: rcpt{i}@{SINK_DOMAIN}\r\nSubject: fault {i}\r\n"
                f"Message-ID: {message_id}\r\n\r\n{body}"
            ).encode()
            tries += 1
            try:
                if client is None or not client.is_connected:
                    client = aiosmtplib.SMTP(
                        hostname="127.0.0.1",
                        port=port,
                        local_hostname="client.bench.test",
                        start_tls=False,
                        timeout=10,
                    )
                    await client.connect()
                await client.sendmail("sender@bench.test", [f"rcpt{i}@{SINK_DOMAIN}"], message)
                accepted.add(message_id)
            except (aiosmtplib.SMTPException, OSError):
                client = None
                queue.put_nowait(i)  # not accepted: try again (the runtime may be restarting)
                await asyncio.sleep(0.2)
        if client is not None and client.is_connected:
            client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tries


def _killer(remails: Remails, kills: int, window: float, rng: random.Random, log: list[float]) -> None:
    """Kill at random moments within the load window, restart at once."""
    started = time.monotonic()
    moments = sorted(rng.uniform(0.1, 0.9) * window for _ in range(kills))
    for moment in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        remails.kill()
        log.append(round(time.monotonic() - started, 2))
        remails.start(remails.project_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/faults", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--bound", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ensure_debian_tools()
    rng = random.Random(args.seed)
    with workspace() as workdir:
        sink_ip = "127.0.0.22"
        sink = DumpSink(sink_ip, free_port(sink_ip), workdir)
        dns = local_dns(sink_ip)
        env = {
            "REMAILS_STUCK_AFTER_SECONDS": "3",
            "REMAILS_TICK_SECONDS": "0.5",
            "REMAILS_RETRY_FIRST_SECONDS": "1",
        }
        remails = Remails(workdir, dns, sink.port, extra_env=env)
        kills: list[float] = []
        try:
            remails.project_id = remails.setup_tenant()
            remails.start(remails.project_id)
            deadline = time.monotonic() + args.bound
            # The load window is a guess from a quick rate; kills land inside it.
            window = max(3.0, args.messages / 150)
            killer = threading.Thread(target=_killer, args=(remails, args.kills, window, rng, kills))
            killer.start()
            accepted: set[str] = set()
            asyncio.run(_generate(remails.port, args.messages, args.concurrency, deadline, accepted))
            killer.join()
            while time.monotonic() < deadline:
                arrived = sink.message_ids()
                if accepted <= set(arrived):
                    break
                time.sleep(0.5)
            arrived = sink.message_ids()
        finally:
            remails.stop()
            sink.stop()
            dns.stop()
    lost = len(accepted - set(arrived))
    result = {
        "accepted": len(accepted),
        "delivered_unique": len(accepted & set(arrived)),
        "lost": lost,
        "duplicates": sum(n - 1 for n in arrived.values() if n > 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"killed at {kills} s into the load")
        for key, value in result.items():
            print(f"{key:18}{value}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
