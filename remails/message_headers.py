"""Byte-level header work on an RFC 5322 message: line endings, missing Message-ID/Date, trace.

Works on bytes without re-flattening the message, so what the sender wrote (and what DKIM will
sign) stays exactly as written apart from the headers we prepend.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from email.utils import format_datetime

from remails.addresses import ascii_domain

__all__ = [
    "MAX_LINE_OCTETS",
    "has_bare_line_ending",
    "header_block",
    "header_value",
    "headers_to_prepend",
    "longest_line",
    "normalise_line_endings",
    "prepend_headers",
    "prepend_headers_in_place",
    "received_header",
    "trace_domain",
]

MAX_LINE_OCTETS = 998  # RFC 5322 §2.1.1 / RFC 5321 §4.5.3.1.6, without the CRLF

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def has_bare_line_ending(data: bytes) -> bool:
    """A CR not followed by LF, or an LF not preceded by CR (the SMTP smuggling ingredients)."""
    # Each CRLF accounts for one CR and one LF; three counts are ~6x faster than the regex.
    pairs = data.count(b"\r\n")
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR or LF becomes CRLF (before DKIM signing, so the signature survives relays)."""
    # Almost every message is CRLF-only already (the edge refuses bare ones): then the regex
    # has nothing to replace, and the three counts are far cheaper than its scan.
    if not has_bare_line_ending(data):
        return data
    return _BARE.sub(b"\r\n", data)


def header_block(data: bytes) -> bytes:
    match = _HEADER_END.search(data)
    return data[: match.start()] if match else data


def header_value(data: bytes, name: str) -> str | None:
    """The first value of header `name` (unfolded), or None."""
    pattern = re.compile(
        rb"^" + re.escape(name.encode()) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
        re.IGNORECASE | re.MULTILINE,
    )
    match = pattern.search(header_block(data))
    if match is None:
        return None
    value = re.sub(rb"\r?\n", b"", match.group(1)).strip()
    return value.decode("utf-8", errors="replace")


def prepend_headers(
    data: bytes, *, hostname: str, message_id: str, now: datetime, trace: str | None = None
) -> tuple[bytes, str]:
    """Add `Message-ID` and `Date` when missing and a trace header; returns (bytes, Message-ID)."""
    added, message_id_header = headers_to_prepend(
        data, hostname=hostname, message_id=message_id, now=now, trace=trace
    )
    return (added + data if added else data), message_id_header


def prepend_headers_in_place(
    data: bytearray, *, hostname: str, message_id: str, now: datetime, trace: str | None = None
) -> str:
    """`prepend_headers` into the buffer itself (a large message is not copied); the Message-ID."""
    added, message_id_header = headers_to_prepend(
        data, hostname=hostname, message_id=message_id, now=now, trace=trace
    )
    data[0:0] = added
    return message_id_header


def headers_to_prepend(
    data: bytes | bytearray, *, hostname: str, message_id: str, now: datetime, trace: str | None = None
) -> tuple[bytes, str]:
    """The header lines to put before `data`, and the message's Message-ID."""
    end = _HEADER_END.search(data)
    head = bytes(data if end is None else memoryview(data)[: end.start()])  # the header block only
    added: list[str] = []
    if trace:
        added.append(trace)
    existing_id = header_value(head, "Message-ID")
    if existing_id:
        message_id_header = existing_id
    else:
        message_id_header = f"<{message_id}@{hostname}>"
        added.append(f"Message-ID: {message_id_header}")
    if header_value(head, "Date") is None:
        added.append(f"Date: {format_datetime(now)}")
    return "".join(h + "\r\n" for h in added).encode(), message_id_header


def longest_line(data: bytes) -> int:
    """The length in octets of the longest line, without its line ending."""
    return max((len(line) for line in re.split(rb"\r\n|\r|\n", data)), default=0)


_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def trace_domain(ehlo: str | None) -> str:
    """A client's EHLO text reduced to RFC 5321 syntax for the Received header: a domain (in
    A-labels), an address literal, or `unknown` — never text that could break the header."""
    text = (ehlo or "").strip()
    if text.startswith("[") and text.endswith("]"):
        literal = text[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                return f"[IPv6:{ipaddress.IPv6Address(literal[5:]).compressed}]"
            return f"[{ipaddress.IPv4Address(literal)}]"
        except ValueError:
            return "unknown"
    if text and all(_HOSTNAME_LABEL.match(label) for label in text.split(".")):
        return text.lower()
    if text and not text.isascii():
        return ascii_domain(text) or "unknown"
    return "unknown"


def received_header(
    *, by: str, protocol: str, message_id: str, now: datetime, from_domain: str | None = None
) -> str:
    """Our trace field (RFC 5321 §4.4): `from` names the client as it introduced itself
    (already reduced with `trace_domain`); submissions without a HELO (HTTP) have none."""
    source = f"from {from_domain} " if from_domain else ""
    return f"Received: {source}by {by} with {protocol} id {message_id}; {format_datetime(now)}"
