"""8-bit to 7-bit for an MX that does not offer 8BITMIME (RFC 6152 §3): each MIME part with
8-bit content is re-encoded — text as quoted-printable, anything else as base64 — like
Postfix's 8BITMIME downgrade. Everything else stays byte for byte as written, headers
included, so only the re-encoded parts differ from what the sender submitted.

Works on CRLF-normalised bytes; the result is what gets DKIM-signed and sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = ["MAX_DEPTH", "to_seven_bit"]

MAX_DEPTH = 20  # nested multiparts deeper than this are not MIME anyone writes; base64 them
_PARSER = BytesHeaderParser(policy=compat32)
_CTE_FIELD = re.compile(rb"^content-transfer-encoding[ \t]*:.*(?:\r\n[ \t].*)*\r\n", re.I | re.M)


def _split(entity: bytes) -> tuple[bytes, bytes]:
    """(header block with its last CRLF, body). No blank line: all header, no body."""
    if entity.startswith(b"\r\n"):
        return b"", entity[2:]
    end = entity.find(b"\r\n\r\n")
    if end < 0:
        return entity, b""
    return entity[: end + 2], entity[end + 4 :]


def _with_cte(head: bytes, cte: bytes) -> bytes:
    return _CTE_FIELD.sub(b"", head) + b"Content-Transfer-Encoding: " + cte + b"\r\n"


def _quoted_printable(body: bytes) -> bytes:
    """Line by line, so the CRLF line breaks of the text stay hard line breaks."""
    lines = []
    for line in body.split(b"\r\n"):
        encoded = binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
        lines.append(encoded.replace(b"=\n", b"=\r\n"))
    return b"\r\n".join(lines)


def _base64(body: bytes) -> bytes:
    return base64.encodebytes(body).replace(b"\n", b"\r\n")


def _leaf(head: bytes, headers: Message, body: bytes) -> bytes:
    if headers.get_content_maintype() == "text":
        return _with_cte(head, b"quoted-printable") + b"\r\n" + _quoted_printable(body)
    return _with_cte(head, b"base64") + b"\r\n" + _base64(body)


def _multipart(head: bytes, boundary: str, body: bytes, depth: int) -> bytes:
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r\n|$)")
    out = [head, b"\r\n"]
    position = 0
    prefix: bytes | None = None  # the delimiter before the part being read
    for match in delimiter.finditer(body):
        between = body[position : match.start()]
        if prefix is None:
            out.append(between if between.isascii() else b"")  # the preamble, read by nobody
        else:
            out.append(prefix)
            out.append(_entity(between, depth + 1))
        prefix = match.group(0)
        position = match.end()
        if match.group(1):  # the close delimiter
            out.append(prefix)
            epilogue = body[position:]
            out.append(epilogue if epilogue.isascii() else b"")
            return b"".join(out)
    # No close delimiter: keep what there is, converted.
    if prefix is not None:
        out.append(prefix)
        out.append(_entity(body[position:], depth + 1))
    else:
        out.append(body if body.isascii() else _base64(body))
    return b"".join(out)


def _entity(entity: bytes, depth: int) -> bytes:
    if entity.isascii():
        return entity
    head, body = _split(entity)
    headers = _PARSER.parsebytes(head)
    maintype = headers.get_content_maintype()
    if depth < MAX_DEPTH:
        boundary = headers.get_boundary()
        if maintype == "multipart" and boundary:
            return _multipart(head, boundary, body, depth)
        if maintype == "message" and headers.get_content_subtype() == "rfc822":
            # An attached message may not be encoded itself (RFC 2046 §5.2.1): convert inside it.
            return _with_cte(head, b"7bit") + b"\r\n" + _entity(body, depth + 1)
    if body.isascii():
        return entity  # only the headers are 8-bit: that needs SMTPUTF8, not a downgrade
    return _leaf(head, headers, body)


def to_seven_bit(message: bytes) -> bytes:
    """`message` with every 8-bit body part re-encoded; 7-bit input comes back unchanged."""
    return _entity(message, 0)
