"""The DNS records a customer publishes for a sending domain, and how to judge what DNS holds.

Pure functions: no I/O. `remails.dns` does the lookups.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DnsRecord",
    "RecordCheck",
    "check_records",
    "dkim_published",
    "dkim_record",
    "dkim_record_name",
    "expected_records",
    "is_same_or_subdomain",
    "parse_tags",
    "return_path_ok",
    "return_path_records",
]


@dataclass(frozen=True)
class DnsRecord:
    kind: str  # "dkim" | "spf" | "dmarc"
    type: str
    name: str
    value: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "value": self.value}


@dataclass(frozen=True)
class RecordCheck:
    ok: bool
    found: list[str]
    expected: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "found": self.found, "expected": self.expected}


def dkim_record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def _spf_terms(outbound_ips: list[str]) -> list[str]:
    terms = []
    for ip in outbound_ips:
        version = ipaddress.ip_address(ip).version
        terms.append(f"ip{version}:{ip}")
    return terms


def expected_records(
    domain: str, selector: str, public_key_b64: str, outbound_ips: list[str], *, rua: str | None = None
) -> list[DnsRecord]:
    """`rua`: the address DMARC aggregate reports go to (ours, see docs/receiving.md)."""
    spf = " ".join(["v=spf1", *_spf_terms(outbound_ips), "~all"])
    dmarc = "v=DMARC1; p=none" + (f"; rua=mailto:{rua}" if rua else "")
    return [
        DnsRecord(
            "dkim",
            "TXT",
            dkim_record_name(selector, domain),
            f"v=DKIM1; k=rsa; p={public_key_b64}",
        ),
        DnsRecord("spf", "TXT", domain, spf),
        DnsRecord("dmarc", "TXT", f"_dmarc.{domain}", dmarc),
    ]


def return_path_records(return_domain: str, hostname: str, outbound_ips: list[str]) -> list[DnsRecord]:
    """The return-path subdomain (rp.<domain>): bounces come to our MX, and SPF passes for
    the envelope sender there — aligned with the From domain for DMARC."""
    spf = " ".join(["v=spf1", *_spf_terms(outbound_ips), "-all"])
    return [
        DnsRecord("return_path_mx", "MX", return_domain, f"10 {hostname.rstrip('.')}."),
        DnsRecord("return_path_spf", "TXT", return_domain, spf),
    ]


def return_path_ok(records: list[DnsRecord], mx_hosts: list[str], txts: list[str]) -> bool:
    """Does DNS hold the return-path records: an MX naming our host, and the SPF terms?"""
    by_kind = {r.kind: r for r in records}
    ours = by_kind["return_path_mx"].value.split()[-1].rstrip(".").lower()
    mx_ok = ours in {h.rstrip(".").lower() for h in mx_hosts}
    return mx_ok and _check_spf(by_kind["return_path_spf"], txts)


def parse_tags(record: str) -> dict[str, str]:
    """`k=v; k2=v2` tag lists (DKIM, DMARC), whitespace removed inside values."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def _check_dkim(expected: DnsRecord, found: list[str]) -> bool:
    want = parse_tags(expected.value)["p"]
    return any(parse_tags(txt).get("p") == want for txt in found)


def dkim_record(selector: str, domain: str, public_key_b64: str, algorithm: str = "rsa-sha256") -> DnsRecord:
    """The TXT record of one DKIM key; Ed25519 keys (RFC 8463) say k=ed25519."""
    kind = "ed25519" if algorithm == "ed25519-sha256" else "rsa"
    return DnsRecord(
        "dkim", "TXT", dkim_record_name(selector, domain), f"v=DKIM1; k={kind}; p={public_key_b64}"
    )


def dkim_published(expected: DnsRecord, found: list[str]) -> bool:
    """Does one of the TXT strings carry the key of `expected`?"""
    return _check_dkim(expected, found)


def _check_spf(expected: DnsRecord, found: list[str]) -> bool:
    spf = [txt for txt in found if txt.lower().startswith("v=spf1")]
    if len(spf) != 1:  # RFC 7208 §4.5: more than one SPF record is a permanent error
        return False
    terms = {t.lower() for t in spf[0].split()}
    return all(t.lower() in terms for t in expected.value.split()[1:-1])


def _check_dmarc(found: list[str]) -> bool:
    return any(parse_tags(txt).get("v", "").upper() == "DMARC1" for txt in found)


def check_records(
    records: list[DnsRecord], found: dict[str, list[str]]
) -> tuple[bool, dict[str, RecordCheck]]:
    """Judge looked-up TXT strings per record kind; verified needs DKIM and SPF (DMARC advised)."""
    checks: dict[str, RecordCheck] = {}
    for record in records:
        txts = found.get(record.kind, [])
        if record.kind == "dkim":
            ok = _check_dkim(record, txts)
        elif record.kind == "spf":
            ok = _check_spf(record, txts)
        else:
            ok = _check_dmarc(txts)
        checks[record.kind] = RecordCheck(ok, txts, record.value)
    return checks["dkim"].ok and checks["spf"].ok, checks


def is_same_or_subdomain(candidate: str, domain: str) -> bool:
    """True for `domain` itself or a name under it, on a dot boundary (not `evil-domain`)."""
    candidate, domain = candidate.lower().rstrip("."), domain.lower().rstrip(".")
    return candidate == domain or candidate.endswith("." + domain)
