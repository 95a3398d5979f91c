"""The sender asks DNS once per destination for as long as the answers hold: resolved MX hosts
and their addresses are kept until the earliest TTL (failures are not kept), and a domain
without an MTA-STS record is not asked again for a minute. Real DNS server on loopback."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dns.asyncresolver
import pytest
from dnslib import QTYPE

from bench.dnsserver import LocalDns
from remails_sender_node.mta_sts import MtaSts
from remails_sender_node.mx import DestinationCache, resolve_destination


@pytest.fixture
def counted_dns() -> Iterator[tuple[LocalDns, Counter[tuple[str, str]]]]:
    server = LocalDns()
    asked: Counter[tuple[str, str]] = Counter()
    answer = server.zone.resolve

    def resolve(request: Any, handler: Any) -> Any:
        asked[(str(request.q.qname).rstrip(".").lower(), QTYPE[request.q.qtype])] += 1
        return answer(request, handler)

    server.zone.resolve = resolve  # type: ignore[method-assign]
    server.start()
    yield server, asked
    server.stop()


def _resolver(server: LocalDns) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.timeout = resolver.lifetime = 2
    return resolver


async def test_a_resolved_destination_is_kept_for_its_ttl_and_a_missing_address_is_asked_again(
    counted_dns: tuple[LocalDns, Counter[tuple[str, str]]],
) -> None:
    server, asked = counted_dns
    server.zone.mx("dest.test", "mx1.dest.test", 10)
    server.zone.mx("dest.test", "mx2.dest.test", 20)
    server.zone.a("mx1.dest.test", "127.0.0.10")  # mx2 has no address yet
    resolver, cache, rng = _resolver(server), DestinationCache(), random.Random(1)

    first = await resolve_destination(resolver, "dest.test", "127.0.0.2", rng, cache)
    assert [(h.name, h.addresses) for h in first] == [("mx1.dest.test", ["127.0.0.10"])]
    server.zone.remove("mx1.dest.test", "A")
    server.zone.a("mx1.dest.test", "127.0.0.11")
    # An answer with no address is not kept: the next message asks again and sees mx2's new one.
    server.zone.a("mx2.dest.test", "127.0.0.12")
    second = await resolve_destination(resolver, "dest.test", "127.0.0.2", rng, cache)
    assert [(h.name, h.addresses) for h in second] == [
        ("mx1.dest.test", ["127.0.0.11"]),
        ("mx2.dest.test", ["127.0.0.12"]),
    ]
    # Now every answer holds (TTL 60 s): the next ten messages ask nothing.
    before = sum(asked.values())
    for _ in range(10):
        again = await resolve_destination(resolver, "dest.test", "127.0.0.2", rng, cache)
        assert {h.name for h in again} == {"mx1.dest.test", "mx2.dest.test"}
    assert sum(asked.values()) == before


async def test_a_domain_without_an_mta_sts_record_is_asked_once_a_minute(
    counted_dns: tuple[LocalDns, Counter[tuple[str, str]]],
) -> None:
    server, asked = counted_dns
    server.zone.mx("dest.test", "mx.dest.test")
    mta_sts = MtaSts(_resolver(server), timeout=1)
    try:
        for _ in range(5):
            assert await mta_sts.policy("dest.test") is None
    finally:
        await mta_sts.close()
    assert asked[("_mta-sts.dest.test", "TXT")] == 1
