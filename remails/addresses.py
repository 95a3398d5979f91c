"""Mailbox addresses on the wire: is this one bare RFC 5321 address (RFC 6531 when it holds
UTF-8), and its ASCII form (the domain as IDNA 2008 A-labels).

One home for the question, asked by the SMTP edge, the HTTP API and the sender alike, so that
the string that is checked is the string that is sent.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import idna

__all__ = [
    "MAX_ADDRESS_OCTETS",
    "Mailbox",
    "ascii_domain",
    "parse_mailbox",
]

MAX_LOCAL_OCTETS = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN_OCTETS = 255  # RFC 5321 §4.5.3.1.2
MAX_ADDRESS_OCTETS = 254  # a 256-octet path less its angle brackets

# RFC 5322 atext, widened by RFC 6531 to every non-ASCII character (checked separately).
_ATEXT = r"\-A-Za-z0-9!#$%&'*+/=?^_`{|}~"
_DOT_STRING = re.compile(rf"^[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*$")
# RFC 5321 Quoted-string: qtextSMTP or a backslash pair, UTF-8 allowed by RFC 6531.
_QUOTED = re.compile(r'^"(?:[ !#-\[\]-~\u0080-\U0010ffff]|\\[ -~])*"$')
_LDH_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Mailbox:
    """One address as submitted: `local@domain`, with its wire forms."""

    local: str
    domain: str  # as written (ASCII or U-labels)
    domain_ascii: str  # A-labels, lower case

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def needs_smtputf8(self) -> bool:
        """A non-ASCII local part can only travel in an SMTPUTF8 transaction (RFC 6531)."""
        return not self.local.isascii()

    def wire(self, smtputf8: bool) -> str:
        """The form for MAIL/RCPT: as written inside an SMTPUTF8 transaction, else with the
        domain's A-labels (which needs the local part to be ASCII)."""
        if smtputf8:
            return self.text
        return f"{self.local}@{self.domain_ascii}"


def _valid_utf8_text(text: str) -> bool:
    """No controls, no spaces beyond ASCII's, no surrogates (undecodable bytes an SMTP server
    let through)."""
    return all(ch.isprintable() if ch.isascii() else unicodedata.category(ch)[0] not in "CZ" for ch in text)


def ascii_domain(domain: str) -> str | None:
    """The domain in A-labels, lower case; None when it is no valid host name (address
    literals are refused: mail for a bare IP is not transactional mail)."""
    if not domain or len(domain.encode()) > MAX_DOMAIN_OCTETS:
        return None
    labels = domain.split(".")
    if len(labels) < 2:
        return None
    out = []
    for label in labels:
        if label.isascii():
            if not _LDH_LABEL.match(label):
                return None
            out.append(label.lower())
            continue
        try:
            # IDNA 2008 with the UTS #46 mapping (case folding, width), non-transitional.
            encoded = idna.encode(label, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
        out.append(encoded.lower())
    result = ".".join(out)
    if len(result) > MAX_DOMAIN_OCTETS:
        return None
    return result


def _looks_like_ip(domain: str) -> bool:
    # Only digits and dots (IPv4) or a colon (IPv6) can parse as an address: the parse, and the
    # exception it raises for every ordinary domain, only for those.
    if ":" not in domain and not domain.replace(".", "").isdigit():
        return False
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return False
    return True


def parse_mailbox(text: str) -> Mailbox | None:
    """`text` as exactly one bare address (no brackets, comments, display name or list), or
    None. UTF-8 is allowed in the local part and the domain (RFC 6531)."""
    if not text or len(text.encode("utf-8", errors="surrogatepass")) > MAX_ADDRESS_OCTETS:
        return None
    if not _valid_utf8_text(text):
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return None
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        return None
    if not (_DOT_STRING.match(local) or _QUOTED.match(local)):
        return None
    if domain.startswith("["):
        return None
    if _looks_like_ip(domain):
        return None  # a bare IP is no domain
    domain_ascii = ascii_domain(domain)
    if domain_ascii is None:
        return None
    return Mailbox(local, domain, domain_ascii)
