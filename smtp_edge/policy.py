"""The edge's own decisions, as pure functions of facts gathered by the handler.

Whether a project may send as an address is shared with the HTTP API: `remails.sending_policy`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping

from remails.addresses import parse_mailbox
from remails.errors import Refusal, Reply, TooManyRecipients

__all__ = [
    "BAD_UTF8_ADDRESS",
    "UTF8_NEEDS_SMTPUTF8",
    "check_address_charset",
    "check_recipient_count",
    "trusted_project",
]

UTF8_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter on MAIL")
BAD_UTF8_ADDRESS = Reply(553, "5.1.3", "Not a valid UTF-8 mailbox address")


def check_address_charset(address: str, smtputf8: bool) -> Reply | None:
    """RFC 6531: a UTF-8 address only in a transaction whose MAIL carried SMTPUTF8, and then
    a well-formed one (undecodable bytes arrive as surrogates and are refused)."""
    if address.isascii():
        return None
    if not smtputf8:
        return UTF8_NEEDS_SMTPUTF8
    return None if parse_mailbox(address) is not None else BAD_UTF8_ADDRESS


def check_recipient_count(already: int, limit: int) -> Refusal | None:
    return TooManyRecipients() if already >= limit else None


def trusted_project(peer_ip: str, networks: Mapping[str, str]) -> str | None:
    """The project a client in a trusted network submits as, or None."""
    try:
        ip = _address(peer_ip)
    except ValueError:
        return None
    for cidr, project in networks.items():
        if ip in _network(cidr):
            return project
    return None


# The same few networks on every connection, and mostly the same few clients: parsed once.
_network = functools.lru_cache(maxsize=256)(ipaddress.ip_network)
_address = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)
