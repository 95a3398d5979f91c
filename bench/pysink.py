"""A sink for backpressure runs: 4xx for a share of transactions, a delay before each reply.

Usage: python -m bench.pysink IP PORT FAIL_SHARE DELAY_S COUNTER_FILE. Exits after 600 s.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, fail_share: float, delay: float, counter: Path) -> None:
        self.fail_share, self.delay, self.counter = fail_share, delay, counter
        self.accepted = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if random.random() < self.fail_share:
            return "451 4.3.0 busy, try again later"
        self.accepted += 1
        partial = self.counter.with_suffix(".tmp")
        partial.write_text(f"{self.accepted}\n")
        partial.replace(self.counter)  # readers never see a half-written count
        return "250 2.0.0 Ok"


async def main() -> None:
    ip, port, share, delay, counter = sys.argv[1:6]
    handler = Handler(float(share), float(delay), Path(counter))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="pysink.bench.test"), ip, int(port))
    async with server:
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main())
