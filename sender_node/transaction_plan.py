"""What one SMTP transaction will say, decided from the envelope and the MX's EHLO keywords:
the wire form of each address (A-labels unless SMTPUTF8 is used), which recipients cannot go
to this MX at all (RFC 6531: a UTF-8 mailbox needs SMTPUTF8, else 5.6.7), and whether the body
travels as written (BODY=8BITMIME) or converted to 7-bit (RFC 6152).

Pure: no socket, no clock.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from remails.addresses import parse_mailbox

__all__ = ["Plan", "Refusal", "mail_options", "plan_transaction"]

Refusal = tuple[None, str, str]  # (no SMTP code: never sent, enhanced, text)


@dataclass(frozen=True)
class Plan:
    mail_from: str  # wire form; "" for the null sender
    recipients: dict[str, str]  # address as stored → wire form, to send RCPT for
    refused: dict[str, Refusal] = field(default_factory=dict)  # decided here, never sent
    smtputf8: bool = False
    seven_bit: bool = False  # send the 7-bit conversion of the body
    body_8bitmime: bool = False  # declare BODY=8BITMIME


def plan_transaction(
    mail_from: str,
    recipients: list[str],
    *,
    eight_bit: bool,
    utf8_headers: bool,
    offers: Collection[str],
) -> Plan:
    """`offers`: the MX's EHLO keywords, lower case."""
    sender = parse_mailbox(mail_from) if mail_from else None
    if mail_from and sender is None:
        refusal: Refusal = (None, "5.1.7", "the sender address is not a valid address")
        return Plan("", {}, {r: refusal for r in recipients})
    refused: dict[str, Refusal] = {}
    parsed = {}
    for address in recipients:
        mailbox = parse_mailbox(address)
        if mailbox is None:
            refused[address] = (None, "5.1.3", "the recipient address is not a valid address")
        else:
            parsed[address] = mailbox
    utf8_offered = "smtputf8" in offers
    whole_needs_utf8 = utf8_headers or (sender is not None and sender.needs_smtputf8)
    if not utf8_offered:
        for address, mailbox in list(parsed.items()):
            if whole_needs_utf8 or mailbox.needs_smtputf8:
                what = "UTF-8 address" if mailbox.needs_smtputf8 else "message with UTF-8 headers or sender"
                refused[address] = (None, "5.6.7", f"a {what} needs SMTPUTF8, which this MX does not offer")
                del parsed[address]
    smtputf8 = utf8_offered and (whole_needs_utf8 or any(m.needs_smtputf8 for m in parsed.values()))
    seven_bit = eight_bit and "8bitmime" not in offers
    return Plan(
        mail_from=sender.wire(smtputf8) if sender is not None else "",
        recipients={address: m.wire(smtputf8) for address, m in parsed.items()},
        refused=refused,
        smtputf8=smtputf8,
        seven_bit=seven_bit,
        body_8bitmime=eight_bit and not seven_bit,
    )


def mail_options(plan: Plan, size: int, offers: Collection[str]) -> list[str]:
    options = []
    if "size" in offers:
        options.append(f"SIZE={size}")
    if plan.body_8bitmime:
        options.append("BODY=8BITMIME")
    if plan.smtputf8:
        options.append("SMTPUTF8")
    return options
