"""Which outbound IPs this host holds: on Kubernetes every sender node gets the whole pool's
list and keeps the addresses it can bind (its floating IPs)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

__all__ = ["bindable"]


def bindable(candidates: list[str]) -> list[str]:
    """The candidates a socket on this host can bind to (port 0), in the given order."""
    held = []
    for ip in candidates:
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
            held.append(ip)
    return held
