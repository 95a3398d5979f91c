"""MX resolution (RFC 5321 §5.1): preference order, shuffled among equals, implicit MX,
null MX (RFC 7505), and the addresses of each host in the egress source's family."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from remails.dns import describe_dns_error
from remails.errors import DestinationError

__all__ = ["DeliveryDnsError", "MxHost", "order_mx", "resolve_destination"]


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


async def _mx_records(resolver: dns.asyncresolver.Resolver, domain: str) -> list[tuple[int, str]]:
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise DeliveryDnsError("5.1.2", f"domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        return [(0, domain)]  # implicit MX: the domain's own address records
    except dns.exception.DNSException as exc:
        raise DeliveryDnsError("4.4.3", f"MX lookup for {domain} failed: {describe_dns_error(exc)}") from exc
    records = [(int(r.preference), str(r.exchange)) for r in answer]
    if len(records) == 1 and records[0][1] in (".", ""):
        raise DeliveryDnsError("5.1.10", f"domain {domain} accepts no mail (null MX)")
    return records


async def _addresses(resolver: dns.asyncresolver.Resolver, host: str, family: int) -> list[str]:
    rtype = "AAAA" if family == 6 else "A"
    try:
        answer = await resolver.resolve(host, rtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return []
    return [r.address for r in answer]


async def resolve_destination(
    resolver: dns.asyncresolver.Resolver, domain: str, source_ip: str, rng: random.Random
) -> list[MxHost]:
    """The MX hosts to try, in order, each with its addresses reachable from `source_ip`."""
    family = ipaddress.ip_address(source_ip).version
    hosts = order_mx(await _mx_records(resolver, domain), rng)
    resolved = [MxHost(h, await _addresses(resolver, h, family)) for h in hosts]
    usable = [h for h in resolved if h.addresses]
    if not usable:
        raise DeliveryDnsError("4.4.4", f"no IPv{family} address for any MX host of {domain}")
    return usable
