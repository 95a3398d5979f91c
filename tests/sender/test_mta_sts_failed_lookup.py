"""A `_mta-sts` lookup that times out is remembered for a while: a destination whose resolver
path is broken does not cost the resolver's timeout on every delivery."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.asyncresolver
import pytest

from remails_sender_node.mta_sts import MtaSts


class BlackHoleDns:
    """A DNS server on loopback that reads every query and answers none (a timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHoleDns]:
    server = BlackHoleDns()
    server.start()
    yield server
    server.stop()


def _resolver(port: int) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.timeout = resolver.lifetime = 0.3
    return resolver


async def test_a_timed_out_lookup_is_not_repeated_for_the_next_deliveries(black_hole: BlackHoleDns) -> None:
    sts = MtaSts(_resolver(black_hole.port), timeout=1)
    try:
        assert await sts.policy("broken.test") is None  # no policy known: delivered without one
        asked = black_hole.queries
        assert asked >= 1
        for _ in range(3):
            assert await sts.policy("broken.test") is None
        assert black_hole.queries == asked  # remembered: no second timeout
        await sts.policy("other.test")  # another destination is looked up as usual
        assert black_hole.queries > asked
    finally:
        await sts.close()


async def test_without_the_memory_every_delivery_asks_again(black_hole: BlackHoleDns) -> None:
    """The control: with the failure remembered for no time, each delivery waits again."""
    sts = MtaSts(_resolver(black_hole.port), timeout=1, failed_lookup_seconds=0)
    try:
        await sts.policy("broken.test")
        asked = black_hole.queries
        await sts.policy("broken.test")
        assert black_hole.queries > asked
    finally:
        await sts.close()
