"""The edge's own decisions, as pure functions of facts gathered by the handler.

Whether a project may send as an address is shared with the HTTP API: `remails.sending_policy`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from remails.errors import Refusal, TooManyRecipients

__all__ = ["check_recipient_count", "trusted_project"]


def check_recipient_count(already: int, limit: int) -> Refusal | None:
    return TooManyRecipients() if already >= limit else None


def trusted_project(peer_ip: str, networks: Mapping[str, str]) -> str | None:
    """The project a client in a trusted network submits as, or None."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    for cidr, project in networks.items():
        if ip in ipaddress.ip_network(cidr):
            return project
    return None
