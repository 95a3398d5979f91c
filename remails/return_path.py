"""Return-path addresses of our own (VERP) and the other addresses the inbound MX accepts.

Every message leaves with `MAIL FROM:<b…@rp.<domain>>` once the domain's return-path records
verify: the local part is an opaque token naming one (message, recipient), signed with an HMAC
under a key derived from the master key — so a bounce says exactly whom it is about, and nobody
can make up a token that changes someone's recipient. DMARC aggregate reports come to
`r…@<reports domain>`, naming the domain they are about (unsigned: it is public in DNS, and a
report counts only when it is about that domain); complaints may also come to
the feedback address `fbl@<reports domain>`; and `postmaster@<hostname>` is accepted as
RFC 5321 §4.5.1 asks. Anything else is no address of ours.

Pure: no I/O, no clock. Tokens are lower-case base32, because MTAs may change the case of a
local part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

__all__ = [
    "FEEDBACK_LOCAL",
    "KEY_PURPOSE",
    "RETURN_PATH_LABEL",
    "BounceToken",
    "InboundAddress",
    "bounce_address",
    "classify_address",
    "envelope_senders",
    "mint_bounce_token",
    "mint_report_token",
    "report_address",
    "return_path_domain",
    "verify_bounce_token",
    "verify_report_token",
]

KEY_PURPOSE = "remails return-path v1"  # MasterKey.derive(KEY_PURPOSE) is the HMAC key
RETURN_PATH_LABEL = "rp"  # rp.<domain> is the return-path subdomain
FEEDBACK_LOCAL = "fbl"
_MAC_BYTES = 10  # 80 bits: a forger's chance per try is 2**-80
_BOUNCE = "b"
_REPORT = "r"


@dataclass(frozen=True)
class BounceToken:
    message_id: UUID
    recipient_id: int


AddressKind = Literal["bounce", "report", "feedback", "postmaster"]


@dataclass(frozen=True)
class InboundAddress:
    """An address of ours, as the inbound MX accepted it."""

    kind: AddressKind
    address: str
    domain: str  # the domain part (for a bounce: rp.<customer domain>)
    bounce: BounceToken | None = None
    report_domain_id: UUID | None = None


def _mac(key: bytes, kind: str, payload: bytes) -> bytes:
    return hmac.new(key, kind.encode() + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _decode(text: str) -> bytes | None:
    body = text.upper()
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8))
    except (ValueError, TypeError):
        return None


def mint_bounce_token(key: bytes, message_id: UUID, recipient_id: int) -> str:
    """The local part for one recipient of one message (56 characters, within RFC 5321's 64)."""
    payload = recipient_id.to_bytes(8, "big") + message_id.bytes
    return _BOUNCE + _encode(payload + _mac(key, _BOUNCE, payload))


def verify_bounce_token(key: bytes, local_part: str) -> BounceToken | None:
    """The (message, recipient) a token names; None when it is not one we minted."""
    text = local_part.lower()
    if not text.startswith(_BOUNCE) or len(text) != 56:
        return None
    raw = _decode(text[1:])
    if raw is None or len(raw) != 8 + 16 + _MAC_BYTES or _encode(raw) != text[1:]:
        return None
    payload, mac = raw[:24], raw[24:]
    if not hmac.compare_digest(mac, _mac(key, _BOUNCE, payload)):
        return None
    recipient_id = int.from_bytes(payload[:8], "big")
    if recipient_id <= 0:
        return None
    return BounceToken(UUID(bytes=payload[8:]), recipient_id)


def mint_report_token(domain_id: UUID) -> str:
    """The local part of a domain's DMARC `rua` address. Not signed: the address is public
    in DNS anyway, and a report only counts when it is about the domain the address names."""
    return _REPORT + _encode(domain_id.bytes)


def verify_report_token(local_part: str) -> UUID | None:
    text = local_part.lower()
    if not text.startswith(_REPORT) or len(text) != 27:
        return None
    raw = _decode(text[1:])
    if raw is None or len(raw) != 16 or _encode(raw) != text[1:]:
        return None
    return UUID(bytes=raw)


def return_path_domain(domain: str) -> str:
    return f"{RETURN_PATH_LABEL}.{domain.lower().rstrip('.')}"


def bounce_address(key: bytes, domain: str, message_id: UUID, recipient_id: int) -> str:
    return f"{mint_bounce_token(key, message_id, recipient_id)}@{return_path_domain(domain)}"


def report_address(reports_domain: str, domain_id: UUID) -> str:
    return f"{mint_report_token(domain_id)}@{reports_domain.lower()}"


def classify_address(
    key: bytes, address: str, *, hostname: str, reports_domain: str
) -> InboundAddress | None:
    """Is `address` one we issued? None for anything else (the MX answers 550 5.1.1).

    Bounce addresses are judged by their token only; the caller checks that the return-path
    domain belongs to the organization of the message the token names."""
    local, at, domain = address.strip().rpartition("@")
    domain = domain.lower().rstrip(".")
    if not at or not local or '"' in local:
        return None
    reports = reports_domain.lower().rstrip(".")
    if domain.startswith(RETURN_PATH_LABEL + "."):
        token = verify_bounce_token(key, local)
        if token is not None:
            return InboundAddress("bounce", address, domain, bounce=token)
    if domain == reports:
        if local.lower() == FEEDBACK_LOCAL:
            return InboundAddress("feedback", address, domain)
        domain_id = verify_report_token(local)
        if domain_id is not None:
            return InboundAddress("report", address, domain, report_domain_id=domain_id)
    if local.lower() == "postmaster" and domain in (hostname.lower().rstrip("."), reports):
        return InboundAddress("postmaster", address, domain)
    return None


def envelope_senders(
    key: bytes,
    message_id: UUID,
    default_sender: str,
    return_domain: str | None,
    recipient_ids: Mapping[str, int],
    by_domain: Mapping[str, list[str]],
) -> list[tuple[str, list[str], str]]:
    """The SMTP transactions of one delivery: (destination domain, recipients, MAIL FROM).

    Without a verified return-path domain, one transaction per destination with the message's
    own envelope sender. With one, one transaction per recipient, each with its own token
    (a recipient whose row id is unknown keeps the plain sender)."""
    if return_domain is None:
        return [(domain, rcpts, default_sender) for domain, rcpts in by_domain.items()]
    transactions: list[tuple[str, list[str], str]] = []
    for domain, rcpts in by_domain.items():
        plain = [r for r in rcpts if r not in recipient_ids]
        if plain:
            transactions.append((domain, plain, default_sender))
        for rcpt in rcpts:
            if rcpt in recipient_ids:
                sender = bounce_address(key, return_domain, message_id, recipient_ids[rcpt])
                transactions.append((domain, [rcpt], sender))
    return transactions
