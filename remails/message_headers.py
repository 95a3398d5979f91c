"""Byte-level header work on an RFC 5322 message: line endings, missing Message-ID/Date, trace.

Works on bytes without re-flattening the message, so what the sender wrote (and what DKIM will
sign) stays exactly as written apart from the headers we prepend.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import format_datetime

__all__ = [
    "has_bare_line_ending",
    "header_block",
    "header_value",
    "normalise_line_endings",
    "prepend_headers",
]

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def has_bare_line_ending(data: bytes) -> bool:
    """A CR not followed by LF, or an LF not preceded by CR (the SMTP smuggling ingredients)."""
    return _BARE.search(data) is not None


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR or LF becomes CRLF (before DKIM signing, so the signature survives relays)."""
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
    added: list[str] = []
    if trace:
        added.append(trace)
    existing_id = header_value(data, "Message-ID")
    if existing_id:
        message_id_header = existing_id
    else:
        message_id_header = f"<{message_id}@{hostname}>"
        added.append(f"Message-ID: {message_id_header}")
    if header_value(data, "Date") is None:
        added.append(f"Date: {format_datetime(now)}")
    if not added:
        return data, message_id_header
    return "".join(h + "\r\n" for h in added).encode() + data, message_id_header
