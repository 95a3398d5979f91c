"""Adding a sending domain (DKIM key, records to publish) and verifying its DNS records."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import dns.asyncresolver

from remails.crypto import MasterKey, generate_dkim_key
from remails.db import Pool, domains
from remails.dns import txt_records
from remails.domain_records import DnsRecord, check_records, expected_records
from remails.errors import InvalidInput

__all__ = ["add_sending_domain", "domain_view", "normalise_domain", "verify_sending_domain"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(name: str) -> str:
    """Lower-case, no trailing dot, IDNA-encoded; raises InvalidInput naming the field."""
    text = name.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput(f"{name!r} is not a valid domain name", field="domain") from None
    labels = text.split(".")
    if len(labels) < 2 or len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(f"{name!r} is not a valid domain name", field="domain")
    return text


def _records(domain: domains.Domain, outbound_ips: list[str]) -> list[DnsRecord]:
    return expected_records(domain.name, domain.dkim_selector, domain.dkim_public_key, outbound_ips)


def domain_view(domain: domains.Domain, outbound_ips: list[str]) -> dict[str, Any]:
    return {
        "id": str(domain.id),
        "organization_id": str(domain.organization_id),
        "domain": domain.name,
        "dkim_selector": domain.dkim_selector,
        "verified": domain.verified_at is not None,
        "verified_at": domain.verified_at.isoformat() if domain.verified_at else None,
        "dns_records": [r.as_dict() for r in _records(domain, outbound_ips)],
    }


async def add_sending_domain(
    pool: Pool,
    master_key: MasterKey,
    org_id: UUID,
    project_ids: list[UUID],
    name: str,
) -> domains.Domain:
    domain_name = normalise_domain(name)
    key = await asyncio.to_thread(generate_dkim_key)
    selector = "rm" + datetime.now(UTC).strftime("%Y%m")
    sealed = master_key.seal(key.private_pem, context=domain_name)
    # A claim only: it blocks nobody until verified (DomainTaken if someone else verified it).
    return await domains.add_domain(pool, org_id, project_ids, domain_name, selector, sealed, key.public_b64)


async def verify_sending_domain(
    pool: Pool,
    resolver: dns.asyncresolver.Resolver,
    domain: domains.Domain,
    outbound_ips: list[str],
    *,
    force: bool = False,
) -> tuple[domains.Domain, dict[str, Any]]:
    """Look the records up, judge them, store the result. `force`: operator marks it verified."""
    records = _records(domain, outbound_ips)
    found = {r.kind: await txt_records(resolver, r.name) for r in records}
    verified, checks = check_records(records, found)
    result: dict[str, Any] = {
        "domain": domain.name,
        "verified": verified or force,
        "checks": {kind: check.as_dict() for kind, check in checks.items()},
    }
    if force and not verified:
        result["forced"] = True
    updated = await domains.record_verification(pool, domain.id, result, verified or force)
    return updated, result
