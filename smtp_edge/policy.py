"""The edge's decisions, as pure functions of facts gathered by the handler."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from remails.db.orgs import SenderFacts
from remails.domain_records import is_same_or_subdomain
from remails.errors import (
    OrganizationBlocked,
    QuotaExhausted,
    Refusal,
    SenderDomainNotAllowed,
    TooManyRecipients,
)

__all__ = ["address_domain", "check_recipient_count", "check_sender", "trusted_project"]


def address_domain(address: str) -> str | None:
    """The domain of `local@domain`, lower-cased; None when the address has no usable domain."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "." not in domain.strip("."):
        return None
    return domain.lower().rstrip(".")


def check_sender(facts: SenderFacts, mail_from: str) -> Refusal | None:
    """May this project send as `mail_from` right now?"""
    if facts.block_status != "not_blocked":
        return OrganizationBlocked()
    domain = address_domain(mail_from)
    if domain is None or not any(is_same_or_subdomain(domain, d) for d in facts.verified_domains):
        return SenderDomainNotAllowed()
    if facts.quota_left <= 0:
        return QuotaExhausted()
    return None


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
