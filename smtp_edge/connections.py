"""How many SMTP sessions the edge holds, in total and per client address.

The client address is the real one (from the PROXY header behind a load balancer), so one
hostile client cannot fill the table for everyone else behind the same balancer.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence

from remails.errors import Reply

__all__ = ["ConnectionTable", "admission", "proxy_peer_trusted"]

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_YOU = Reply(421, "4.7.0", "Too many connections from your address, try again later")


def admission(total: int, from_address: int, max_total: int, max_per_address: int) -> Reply | None:
    """The refusal for one more session when `total` and `from_address` are already held."""
    if total >= max_total:
        return TOO_MANY_CONNECTIONS
    if from_address >= max_per_address:
        return TOO_MANY_FROM_YOU
    return None


def proxy_peer_trusted(peer_ip: str, networks: Sequence[str]) -> bool:
    """May this peer (the TCP peer, not the address it claims) send a PROXY header?"""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(cidr) for cidr in networks)


class ConnectionTable:
    """Admitted sessions by client address; `admit` checks and counts in one step."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._by_address: Counter[str] = Counter()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    def admit(self, address: str) -> Reply | None:
        refusal = admission(self._total, self._by_address[address], self.max_total, self.max_per_address)
        if refusal is None:
            self._total += 1
            self._by_address[address] += 1
        return refusal

    def release(self, address: str) -> None:
        self._total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]
