"""May this project send as this address right now? Shared by the SMTP edge and the HTTP send.

Also reads the author (From) of a message's header block for alignment: every From field in
any RFC 5322 form counts, so a second one placed late, or written `From :` (the obsolete
form with white space before the colon), is seen like the first.
"""

from __future__ import annotations

import re
from email.errors import InvalidHeaderDefect
from email.headerregistry import Address
from email.policy import default as default_policy

from remails.db.orgs import SenderFacts
from remails.domain_records import is_same_or_subdomain
from remails.errors import OrganizationBlocked, QuotaExhausted, Refusal, SenderDomainNotAllowed

__all__ = ["address_domain", "check_sender", "from_addresses", "header_fields"]

_LINE = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 ftext: printable ASCII but ':'


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


def header_fields(block: bytes) -> list[tuple[str, bytes]] | None:
    """Every field of a header block, in order, as (lower-case name, unfolded value). Names may
    be followed by white space before the colon (RFC 5322 §4.5.3, obsolete but read by
    receivers). None when a line is not a header field at all: a receiver might read such a
    block differently, so nothing in it can be trusted."""
    fields: list[tuple[str, bytes]] = []
    for line in _LINE.split(block):
        if line[:1] in (b" ", b"\t"):  # a folded continuation of the field before
            if not fields:
                return None
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        if not line:
            continue
        raw_name, colon, value = line.partition(b":")
        raw_name = raw_name.rstrip(b" \t")
        if not colon or not _FIELD_NAME.match(raw_name):
            return None
        fields.append((raw_name.decode("ascii").lower(), value))
    return fields


def from_addresses(block: bytes) -> list[Address] | str:
    """The addresses of the one From field of a header block, or why they cannot be trusted
    (none, more than one, unreadable, or written so that readers may disagree on them)."""
    fields = header_fields(block)
    if fields is None:
        return "malformed header block: a line is not a header field"
    values = [value for name, value in fields if name == "from"]
    if not values:
        return "message has no From header"
    if len(values) > 1:
        return "message has more than one From header"
    try:
        header = default_policy.header_factory("from", values[0].decode("utf-8").strip())
    except UnicodeDecodeError:
        return "From header is not UTF-8"
    except Exception as exc:  # the address parser raises on some malformed input
        return f"unreadable From header: {type(exc).__name__}"
    if any(isinstance(d, InvalidHeaderDefect) for d in header.defects):
        return "From header is not a valid address list"
    addresses = list(getattr(header, "addresses", ()))
    if not addresses or any(not a.domain or not a.username for a in addresses):
        return "From header has no valid address"
    return addresses
