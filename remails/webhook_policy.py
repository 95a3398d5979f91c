"""Webhook delivery decisions: the retry schedule, what is worth retrying, and which target
addresses are refused (so customer URLs cannot reach internal services)."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta

__all__ = [
    "DEFAULT_SCHEDULE",
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


_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: internal in many clouds


def forbidden_address(ip: str) -> bool:
    """Private, loopback, link-local, multicast, reserved and cloud metadata addresses."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
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
