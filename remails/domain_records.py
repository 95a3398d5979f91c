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
    "dkim_record_name",
    "expected_records",
    "is_same_or_subdomain",
    "parse_tags",
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
    domain: str, selector: str, public_key_b64: str, outbound_ips: list[str]
) -> list[DnsRecord]:
    spf = " ".join(["v=spf1", *_spf_terms(outbound_ips), "~all"])
    return [
        DnsRecord(
            "dkim",
            "TXT",
            dkim_record_name(selector, domain),
            f"v=DKIM1; k=rsa; p={public_key_b64}",
        ),
        DnsRecord("spf", "TXT", domain, spf),
        DnsRecord("dmarc", "TXT", f"_dmarc.{domain}", "v=DMARC1; p=none"),
    ]


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
