"""Webhook delivery decisions: the retry schedule, what is worth retrying, and which target
addresses are refused (so customer URLs cannot reach internal services).

An address is judged by where the packets end up: an IPv6 address that carries an IPv4
address (mapped, compatible, 6to4, Teredo, NAT64) is judged by the IPv4 address it embeds, so
`2002:7f00:1::1` (6to4 of 127.0.0.1) is loopback, and `64:ff9b::808:808` (NAT64 of a public
address, as DNS64 answers in IPv6-only clusters) is public. `webhook_targets` applies this to
URLs and resolved names.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta

__all__ = [
    "DEFAULT_SCHEDULE",
    "embedded_ipv4",
    "forbidden_address",
    "next_delay",
    "parse_schedule",
    "should_retry",
]

DEFAULT_SCHEDULE = "0s,5s,5m,30m,2h,5h,10h"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_schedule(text: str) -> list[float]:
    """`0s,5s,5m` → seconds before each attempt; the first is the first try."""
    delays = []
    for part in text.split(","):
        match = _DURATION.match(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a duration like 5s, 5m or 2h")
        delays.append(float(match.group(1)) * _UNIT[match.group(2)])
    if not delays:
        raise ValueError("the schedule needs at least one delay")
    return delays


def next_delay(schedule: list[float], attempts_made: int) -> timedelta | None:
    """Wait before attempt number `attempts_made + 1`; None when the schedule is used up."""
    if attempts_made >= len(schedule):
        return None
    return timedelta(seconds=schedule[attempts_made])


def should_retry(status_code: int | None) -> bool:
    """Retry on 5xx, 429, timeouts and connection errors (None); not on other answers."""
    return status_code is None or status_code == 429 or status_code >= 500


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: internal in many clouds

_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible (and :: , ::1)
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215, any RFC 6052 prefix length
_TEREDO = ipaddress.ip_network("2001::/32")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _v4(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value & 0xFFFFFFFF)


def _rfc6052(address: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address inside an RFC 6052 address with this prefix length (bits 64-71, the
    "u" octet, are skipped)."""
    octets = address.packed
    start = prefix_length // 8
    picked = [i for i in range(start, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(octets[i] for i in picked))


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (empty for a plain IPv6 address). Teredo
    carries two (server and client); a local-use NAT64 prefix may be any RFC 6052 length, so
    every possible position counts."""
    value = int(address)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _V4_TRANSLATED or address in _V4_COMPATIBLE or address in _NAT64_WELL_KNOWN:
        return [_v4(value)]
    if address in _NAT64_LOCAL:
        return [_rfc6052(address, length) for length in (48, 56, 64, 96)]
    if address in _TEREDO:
        server = _v4(value >> 64)
        client = _v4(~value)  # the client's address is stored inverted
        return [server, client]
    if address in _SIX_TO_FOUR:
        return [_v4(value >> 80)]
    return []


def _forbidden_ip(address: IPAddress) -> bool:
    return (
        address in _METADATA
        or address in _SHARED
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def forbidden_address(ip: str) -> bool:
    """Private, loopback, link-local, multicast, reserved and cloud metadata addresses — for
    an IPv6 address that embeds IPv4, judged by every IPv4 address it embeds."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:
            return any(_forbidden_ip(a) for a in embedded)
    return _forbidden_ip(address)
