"""Adding a sending domain (DKIM key, records to publish) and verifying its DNS records."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import dns.asyncresolver
import dns.exception

from remails import return_path
from remails.crypto import MasterKey, generate_dkim_key
from remails.db import Pool, dkim_keys, domains, inbound
from remails.dns import DnsFailure, txt_lookup
from remails.domain_records import (
    DnsRecord,
    RecordCheck,
    check_records,
    dkim_record,
    expected_records,
    return_path_ok,
    return_path_records,
)
from remails.errors import InvalidInput

__all__ = ["add_sending_domain", "check_reason", "domain_view", "normalise_domain", "verify_sending_domain"]

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


def domain_view(
    domain: domains.Domain,
    outbound_ips: list[str],
    *,
    hostname: str | None = None,
    reports_domain: str | None = None,
    other_keys: Sequence[dkim_keys.DkimKey] = (),
) -> dict[str, Any]:
    """`hostname`: also the return-path records (and `reports_domain` the DMARC rua address).
    `other_keys`: the domain's keys beside its signing RSA key (a rotation's next key, Ed25519,
    previous keys in their grace period), whose records stay listed while they are in use."""
    view: dict[str, Any] = {
        "id": str(domain.id),
        "organization_id": str(domain.organization_id),
        "domain": domain.name,
        "dkim_selector": domain.dkim_selector,
        "verified": domain.verified_at is not None,
        "verified_at": domain.verified_at.isoformat() if domain.verified_at else None,
        "dns_records": [r.as_dict() for r in _records(domain, outbound_ips)],
    }
    if hostname is not None:
        rua = return_path.report_address(reports_domain or hostname, domain.id)
        records = expected_records(
            domain.name, domain.dkim_selector, domain.dkim_public_key, outbound_ips, rua=rua
        )
        rp = return_path.return_path_domain(domain.name)
        records += return_path_records(rp, hostname, outbound_ips)
        view["dns_records"] = [r.as_dict() for r in records]
        view["return_path"] = rp
    keys = [dkim_record(k.selector, domain.name, k.public_key, k.algorithm) for k in other_keys]
    view["dns_records"] += [r.as_dict() for r in keys]
    view["dkim_keys"] = [
        {"selector": domain.dkim_selector, "algorithm": "rsa-sha256", "state": "active"},
        *({"selector": k.selector, "algorithm": k.algorithm, "state": k.state} for k in other_keys),
    ]
    return view


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


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: str, force: bool
) -> tuple[list[str], str | None]:
    """A failed lookup stops a check (the answer is unknown), except when the operator forces
    the domain verified: then it is only reported."""
    try:
        return await txt_lookup(resolver, name)
    except DnsFailure as exc:
        if not force:
            raise
        return [], exc.message


def check_reason(record: DnsRecord, check: RecordCheck, absent: str | None) -> str | None:
    """Why a record check failed, in words; None when it passed."""
    if check.ok:
        return None
    if not check.found:
        return f"no TXT record at {record.name}: {absent or 'none found'}"
    if record.kind == "spf":
        spf = [t for t in check.found if t.lower().startswith("v=spf1")]
        if len(spf) > 1:
            return f"{len(spf)} SPF records at {record.name}; there must be exactly one"
        if spf:
            return f"the SPF record at {record.name} does not name every outbound IP"
    return f"TXT record(s) at {record.name}, but none with the expected value"


async def verify_sending_domain(
    pool: Pool,
    resolver: dns.asyncresolver.Resolver,
    domain: domains.Domain,
    outbound_ips: list[str],
    *,
    force: bool = False,
    hostname: str | None = None,
) -> tuple[domains.Domain, dict[str, Any]]:
    """Look the records up, judge them, store the result. `force`: operator marks it verified.
    `hostname`: also check the return-path subdomain (its MX must name this host)."""
    records = _records(domain, outbound_ips)
    by_kind = {r.kind: r for r in records}
    looked_up = {r.kind: await _lookup(resolver, r.name, force) for r in records}
    verified, checks = check_records(records, {kind: txts for kind, (txts, _) in looked_up.items()})
    result: dict[str, Any] = {
        "domain": domain.name,
        "verified": verified or force,
        "checks": {
            kind: {**check.as_dict(), "reason": check_reason(by_kind[kind], check, looked_up[kind][1])}
            for kind, check in checks.items()
        },
    }
    if force and not verified:
        result["forced"] = True
    if hostname is not None:
        result["return_path"] = await _verify_return_path(pool, resolver, domain, outbound_ips, hostname)
    updated = await domains.record_verification(pool, domain.id, result, verified or force)
    return updated, result


async def _verify_return_path(
    pool: Pool,
    resolver: dns.asyncresolver.Resolver,
    domain: domains.Domain,
    outbound_ips: list[str],
    hostname: str,
) -> dict[str, Any]:
    rp = return_path.return_path_domain(domain.name)
    records = return_path_records(rp, hostname, outbound_ips)
    try:
        answer = await resolver.resolve(rp, "MX")
        mx_hosts = [str(r.exchange) for r in answer]
    except dns.exception.DNSException:
        mx_hosts = []
    try:
        txts, _ = await txt_lookup(resolver, rp)
    except DnsFailure:  # unknown, like a failed MX lookup above: not verified, not an error
        txts = []
    ok = return_path_ok(records, mx_hosts, txts)
    result = {"domain": rp, "verified": ok, "mx": mx_hosts, "txt": txts}
    await inbound.record_return_path(pool, domain.id, result, ok)
    return result
