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


# The commonest From values, `local@domain`, `<local@domain>` and `Name <local@domain>`, in a strict
# ASCII subset of RFC 5322: dot-atom local part, LDH domain labels, display name of letters and
# digits with single spaces. For these the result is known without the (slow) full parser;
# anything else (quotes, comments, groups, encoded words, folding, lists) goes to the parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*"  # no leading/trailing hyphen, no backtracking
_SIMPLE_FROM = re.compile(
    rf"(?:(?:(?P<name>[A-Za-z0-9]+(?: [A-Za-z0-9]+)*) )?(?P<open><))?"
    rf"(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)"
    r"(?(open)>)"  # the closing bracket exactly when there was an opening one
)


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
        value = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "From header is not UTF-8"
    simple = _simple_from(value)
    return simple if simple is not None else _parsed_from(value)


def _simple_from(value: str) -> list[Address] | None:
    """The address of a From value in one of the common plain shapes (the same result as
    `_parsed_from`, proven by tests/unit/test_from_fast_path.py), else None."""
    # "=?" could start an encoded word, which the parser decodes even inside a local part.
    if "=?" in value:
        return None
    match = _SIMPLE_FROM.fullmatch(value)
    if match is None:
        return None
    return [Address(match["name"] or "", match["local"], match["domain"])]


def _parsed_from(value: str) -> list[Address] | str:
    """The addresses of a From value (decoded and stripped) by the full RFC 5322 parser."""
    try:
        header = default_policy.header_factory("from", value)
    except UnicodeDecodeError:  # as before the fast path split decoding from parsing
        return "From header is not UTF-8"
    except Exception as exc:  # the address parser raises on some malformed input
        return f"unreadable From header: {type(exc).__name__}"
    if any(isinstance(d, InvalidHeaderDefect) for d in header.defects):
        return "From header is not a valid address list"
    addresses = list(getattr(header, "addresses", ()))
    if not addresses or any(not a.domain or not a.username for a in addresses):
        return "From header has no valid address"
    return addresses
