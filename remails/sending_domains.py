"""Adding a sending domain (DKIM key, records to publish) and verifying its DNS records."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import dns.asyncresolver
import dns.exception
import dns.resolver

from remails import return_path
from remails.crypto import MasterKey, generate_dkim_key
from remails.db import Pool, dkim_keys, domains, inbound
from remails.db.rows import Executor, transaction
from remails.dns import DnsFailure, describe_dns_error, txt_lookup
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

__all__ = [
    "DomainCheck",
    "NewDomain",
    "add_sending_domain",
    "check_reason",
    "check_return_path",
    "check_sending_domain",
    "domain_view",
    "normalise_domain",
    "prepare_sending_domain",
    "store_check",
    "store_sending_domain",
    "verify_sending_domain",
]

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


@dataclass(frozen=True)
class NewDomain:
    """A domain ready to be stored: its name and a fresh DKIM key (sealed)."""

    name: str
    selector: str
    private_sealed: bytes
    public_key: str

    def __repr__(self) -> str:
        return f"NewDomain(name={self.name!r}, selector={self.selector!r})"


async def prepare_sending_domain(master_key: MasterKey, name: str) -> NewDomain:
    """The slow part of adding a domain (key generation), done before any transaction."""
    domain_name = normalise_domain(name)
    key = await asyncio.to_thread(generate_dkim_key)
    selector = "rm" + datetime.now(UTC).strftime("%Y%m")
    sealed = master_key.seal(key.private_pem, context=domain_name)
    return NewDomain(domain_name, selector, sealed, key.public_b64)


async def store_sending_domain(
    conn: Executor, org_id: UUID, project_ids: list[UUID], new: NewDomain
) -> domains.Domain:
    """A claim only: it blocks nobody until verified (DomainTaken if someone else verified it)."""
    return await domains.add_domain(
        conn, org_id, project_ids, new.name, new.selector, new.private_sealed, new.public_key
    )


async def add_sending_domain(
    pool: Pool,
    master_key: MasterKey,
    org_id: UUID,
    project_ids: list[UUID],
    name: str,
) -> domains.Domain:
    new = await prepare_sending_domain(master_key, name)
    return await store_sending_domain(pool, org_id, project_ids, new)


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


@dataclass(frozen=True)
class DomainCheck:
    """What DNS holds for a domain, judged; stored by `store_check`."""

    domain_id: UUID
    verified: bool  # or forced
    result: dict[str, Any]
    return_path: tuple[dict[str, Any], bool] | None  # (result, ok) when checked


async def check_sending_domain(
    resolver: dns.asyncresolver.Resolver,
    domain: domains.Domain,
    outbound_ips: list[str],
    *,
    force: bool = False,
    hostname: str | None = None,
) -> DomainCheck:
    """Look the records up and judge them, writing nothing (the lookups are slow: they stay
    outside any transaction). `force`: operator marks it verified. `hostname`: also check the
    return-path subdomain (its MX must name this host)."""
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
    return_path = None
    if hostname is not None:
        return_path = await check_return_path(resolver, domain.name, outbound_ips, hostname)
        result["return_path"] = return_path[0]
    return DomainCheck(domain.id, verified or force, result, return_path)


async def store_check(conn: Executor, check: DomainCheck) -> domains.Domain:
    """Store a check's result (one transaction, or the caller's)."""
    async with transaction(conn) as tx:
        if check.return_path is not None:
            await inbound.record_return_path(tx, check.domain_id, *check.return_path)
        return await domains.record_verification(tx, check.domain_id, check.result, check.verified)


async def verify_sending_domain(
    pool: Pool,
    resolver: dns.asyncresolver.Resolver,
    domain: domains.Domain,
    outbound_ips: list[str],
    *,
    force: bool = False,
    hostname: str | None = None,
) -> tuple[domains.Domain, dict[str, Any]]:
    """Look the records up, judge them, store the result."""
    check = await check_sending_domain(resolver, domain, outbound_ips, force=force, hostname=hostname)
    return await store_check(pool, check), check.result


async def check_return_path(
    resolver: dns.asyncresolver.Resolver,
    domain_name: str,
    outbound_ips: list[str],
    hostname: str,
    *,
    strict: bool = False,
) -> tuple[dict[str, Any], bool]:
    """(what rp.<domain> holds, whether it is right): an MX naming our host and the SPF terms.
    A failed lookup counts as not right; with `strict` (a re-check, where an unknown answer
    must not turn a domain invalid) it raises DnsFailure instead."""
    rp = return_path.return_path_domain(domain_name)
    records = return_path_records(rp, hostname, outbound_ips)
    try:
        answer = await resolver.resolve(rp, "MX")
        mx_hosts = [str(r.exchange) for r in answer]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        mx_hosts = []
    except dns.exception.DNSException as exc:
        if strict:
            raise DnsFailure(f"MX lookup for {rp} failed: {describe_dns_error(exc)}") from exc
        mx_hosts = []
    try:
        txts, _ = await txt_lookup(resolver, rp)
    except DnsFailure:  # unknown, like a failed MX lookup above: not verified, not an error
        if strict:
            raise
        txts = []
    ok = return_path_ok(records, mx_hosts, txts)
    return {"domain": rp, "verified": ok, "mx": mx_hosts, "txt": txts}, ok
