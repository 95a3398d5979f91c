"""May this project send as this address right now? Shared by the SMTP edge and the HTTP send."""

from __future__ import annotations

from remails.db.orgs import SenderFacts
from remails.domain_records import is_same_or_subdomain
from remails.errors import OrganizationBlocked, QuotaExhausted, Refusal, SenderDomainNotAllowed

__all__ = ["address_domain", "check_sender"]


def address_domain(address: str) -> str | None:
    """The domain of `local@domain`, lower-cased; None when the address has no usable domain."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "." not in domain.strip("."):
        return None
    return domain.lower().rstrip(".")


def check_sender(facts: SenderFacts, mail_from: str) -> Refusal | None:
    """Blocked organization, then sender domain (verified, dot boundary), then quota."""
    if facts.block_status != "not_blocked":
        return OrganizationBlocked()
    domain = address_domain(mail_from)
    if domain is None or not any(is_same_or_subdomain(domain, d) for d in facts.verified_domains):
        return SenderDomainNotAllowed()
    if facts.quota_left <= 0:
        return QuotaExhausted()
    return None
