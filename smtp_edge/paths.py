"""The common MAIL/RCPT argument, `<local@domain> [parameters]`, read without the email
header parser.

aiosmtpd reads every path with `email._header_value_parser` (comments, quoting, obsolete
routes, encoded words): about a tenth of the edge's time per message. Nearly every client
sends a dot-atom local part and a host name; for exactly that shape `plain_path` gives what
aiosmtpd's `_getaddr` gives, and None for anything else, which then goes to aiosmtpd — so
every reply to an unusual or malformed path stays aiosmtpd's
(`tests/unit/test_edge_paths.py` compares the two).
"""

from __future__ import annotations

import re

__all__ = ["plain_path"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PATH = re.compile(rf"<({_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) for `<dot-atom@host>` followed by nothing or by white space and
    parameters; None for any other shape."""
    match = _PATH.match(arg)
    if match is None:
        return None
    address = match.group(1)
    if "=?" in address:  # could be an RFC 2047 encoded word to the header parser
        return None
    rest = arg[match.end() :]
    if not rest:
        return address, ""
    if rest[0] not in " \t":
        return None
    # The header parser skips white space (str.lstrip's) and comments after the '>'.
    rest = rest.lstrip()
    if rest.startswith("("):
        return None
    return address, rest
