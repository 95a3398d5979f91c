"""SMTP replies: our named replies, and enhanced status codes (RFC 2034/3463) on every reply.

aiosmtpd answers many protocol errors itself without enhanced codes; since we advertise
ENHANCEDSTATUSCODES, `with_enhanced_code` adds the RFC 3463 code matching the basic code.
"""

from __future__ import annotations

import re

from remails.errors import Reply

__all__ = [
    "AUTH_THROTTLED",
    "BAD_RECIPIENT",
    "CREDENTIAL_REVOKED",
    "RECIPIENT_OK",
    "SENDER_OK",
    "SHUTTING_DOWN",
    "STARTTLS_REQUIRED",
    "queued",
    "with_enhanced_code",
]

SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed authentication attempts, try again later")
STARTTLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
CREDENTIAL_REVOKED = Reply(535, "5.7.8", "Authentication credentials no longer valid")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")


def queued(message_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {message_id}"


_DEFAULT_ENHANCED = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    252: "2.0.0",
    421: "4.3.0",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_REPLY = re.compile(r"^(\d{3}) (.*)$", re.DOTALL)
_HAS_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(line: str, *, greeting_or_helo: bool = False) -> str:
    """Add the enhanced code a final reply line lacks. Continuation lines ("250-"), the 220
    greeting, HELO/EHLO answers, 334 challenges and 354 are left alone, as RFC 2034 says."""
    match = _REPLY.match(line)
    if match is None or greeting_or_helo:
        return line
    code, text = int(match.group(1)), match.group(2)
    if code in (334, 354) or _HAS_ENHANCED.match(text):
        return line
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None:
        return line
    text = text.removeprefix("Error: ")
    return f"{code} {enhanced} {text}"
