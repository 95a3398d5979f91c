"""MX resolution (RFC 5321 §5.1): preference order, shuffled among equals, implicit MX,
null MX (RFC 7505), and the addresses of each host in the egress source's family."""

from __future__ import annotations

import functools
import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from remails.dns import describe_dns_error
from remails.errors import DestinationError

__all__ = ["DeliveryDnsError", "DestinationCache", "MxHost", "order_mx", "resolve_destination"]


class DeliveryDnsError(DestinationError):
    """The destination cannot be resolved; `enhanced` says whether it is permanent (5.x.x)."""


@dataclass(frozen=True)
class MxHost:
    name: str
    addresses: list[str]


def order_mx(records: list[tuple[int, str]], rng: random.Random) -> list[str]:
    """Hosts by preference; hosts of equal preference in random order to spread load."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        by_pref.setdefault(pref, []).append(host.rstrip(".").lower())
    ordered: list[str] = []
    for pref in sorted(by_pref):
        hosts = by_pref[pref]
        rng.shuffle(hosts)
        ordered.extend(h for h in hosts if h not in ordered)
    return ordered


IMPLICIT_MX_SECONDS = 60.0  # how long "no MX record, use the domain itself" is kept


async def _mx_records(
    resolver: dns.asyncresolver.Resolver, domain: str
) -> tuple[list[tuple[int, str]], float]:
    """The MX records and when the answer expires (time.time())."""
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise DeliveryDnsError("5.1.2", f"domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        return [(0, domain)], time.time() + IMPLICIT_MX_SECONDS  # implicit MX: its own addresses
    except dns.exception.DNSException as exc:
        raise DeliveryDnsError("4.4.3", f"MX lookup for {domain} failed: {describe_dns_error(exc)}") from exc
    records = [(int(r.preference), str(r.exchange)) for r in answer]
    if len(records) == 1 and records[0][1] in (".", ""):
        raise DeliveryDnsError("5.1.10", f"domain {domain} accepts no mail (null MX)")
    return records, float(answer.expiration)


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str, family: int) -> tuple[list[str], float]:
    """The host's addresses in the family and until when they hold; none, to be asked again
    next time, when it has none or the lookup failed."""
    rtype = "AAAA" if family == 6 else "A"
    try:
        answer = await resolver.resolve(host, rtype)
    except dns.exception.DNSException:  # NXDOMAIN and NoAnswer too
        return [], 0.0
    return [r.address for r in answer], float(answer.expiration)


@dataclass(frozen=True)
class _Resolved:
    records: list[tuple[int, str]]
    addresses: dict[str, list[str]]
    expires: float  # the earliest expiry among the answers (time.time())


async def _resolve(resolver: dns.asyncresolver.Resolver, domain: str, family: int) -> _Resolved:
    records, expires = await _mx_records(resolver, domain)
    addresses = {}
    for host in dict.fromkeys(h.rstrip(".").lower() for _, h in records):
        addresses[host], until = await _addresses(resolver, host, family)
        expires = min(expires, until)
    return _Resolved(records, addresses, expires)


class DestinationCache:
    """Resolved destinations (MX records and their hosts' addresses), kept until the earliest
    of their answers expires, so the messages after the first to a domain ask no question at
    all. Failures are not kept; past `size` domains it starts over."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._kept: dict[tuple[str, int], _Resolved] = {}

    async def get(self, resolver: dns.asyncresolver.Resolver, domain: str, family: int) -> _Resolved:
        key = (domain, family)
        kept = self._kept.get(key)
        if kept is not None and kept.expires > time.time():
            return kept
        fresh = await _resolve(resolver, domain, family)
        if len(self._kept) >= self.size:
            self._kept.clear()
        self._kept[key] = fresh
        return fresh


@functools.lru_cache(maxsize=256)
def _ip_version(source_ip: str) -> int:
    """4 or 6; the node's few source addresses are parsed once."""
    return ipaddress.ip_address(source_ip).version


async def resolve_destination(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    source_ip: str,
    rng: random.Random,
    cache: DestinationCache | None = None,
) -> list[MxHost]:
    """The MX hosts to try, in order, each with its addresses reachable from `source_ip`."""
    family = _ip_version(source_ip)
    found = await (cache.get(resolver, domain, family) if cache else _resolve(resolver, domain, family))
    hosts = order_mx(found.records, rng)
    resolved = [MxHost(h, found.addresses.get(h, [])) for h in hosts]
    usable = [h for h in resolved if h.addresses]
    if not usable:
        raise DeliveryDnsError("4.4.4", f"no IPv{family} address for any MX host of {domain}")
    return usable
