"""DNS lookups through the configured servers (`REMAILS_DNS_SERVERS`), never an implicit default."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from remails.config import Settings
from remails.errors import TemporaryFailure

__all__ = ["DnsFailure", "describe_dns_error", "make_resolver", "txt_lookup", "txt_records"]


class DnsFailure(TemporaryFailure):
    """A lookup failed temporarily (timeout, SERVFAIL): the answer is unknown, not empty."""


def make_resolver(
    settings: Settings, timeout: float = 5.0, *, cache: bool = False
) -> dns.asyncresolver.Resolver:
    """A resolver on the configured servers. `cache`: keep answers for their TTL (delivery);
    without it every lookup asks again (domain verification must see fresh records)."""
    if settings.dns_servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _ in settings.dns_servers]
        # dnspython takes one port for all servers; a per-server port needs nameserver objects.
        resolver.nameserver_ports = {host: port for host, port in settings.dns_servers}
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = dns.resolver.LRUCache(50_000) if cache else None
    return resolver


def describe_dns_error(exc: dns.exception.DNSException) -> str:
    """A lookup failure in words a person reads (not dnspython's class names)."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "the name does not exist (NXDOMAIN)"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "the name has no record of that type"
    if isinstance(exc, dns.exception.Timeout):  # LifetimeTimeout too
        return "the DNS servers did not answer in time (timeout)"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no DNS server gave an answer (SERVFAIL or refused)"
    return "the DNS lookup failed"


async def txt_lookup(resolver: dns.asyncresolver.Resolver, name: str) -> tuple[list[str], str | None]:
    """The TXT strings at `name` (multi-string records joined), and when there are none, why
    (the name does not exist, or has no TXT record). A failed lookup raises DnsFailure."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return [], describe_dns_error(exc)
    except dns.exception.DNSException as exc:
        raise DnsFailure(f"TXT lookup for {name} failed: {describe_dns_error(exc)}") from exc
    return [b"".join(rdata.strings).decode(errors="replace") for rdata in answer], None


async def txt_records(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT strings at `name` (multi-string records joined); [] when there are none."""
    return (await txt_lookup(resolver, name))[0]
