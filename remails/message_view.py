"""A message's fate in words: why it waits, which recipients are suppressed, whether a retry
can do anything. Pure functions of a message detail (`db.messages.get_message_detail`) and the
organization's suppressions among its recipients; the API and the CLI say the same things.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["HEARTBEATS_TO_BE_LIVE", "UNDELIVERED", "explain", "retry_refusal", "with_suppressions"]

# A deferred message may keep recipients `pending` (not tried yet, e.g. a later domain).
UNDELIVERED = ("pending", "bounced", "failed", "deferred")
# Enhanced codes of a delivery that failed at DNS, before any server (remails_sender_node.mx).
_DNS_STATUSES = ("4.4.3", "4.4.4", "5.1.2", "5.1.10")
_IN_PROGRESS = ("received", "validated", "admitted", "routed", "sending", "attempted")


def _at(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)


def with_suppressions(
    recipients: list[dict[str, Any]], suppressed: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Each recipient with `suppressed` (is the address on the list now) and why it is."""
    return [
        {
            **r,
            "suppressed": r["address"].lower() in suppressed,
            "suppression_reason": suppressed.get(r["address"].lower()),
        }
        for r in recipients
    ]


def _reply(r: Mapping[str, Any]) -> str:
    text = r.get("last_text") or "no reply recorded"
    if r.get("last_code") is None and r.get("last_enhanced") in _DNS_STATUSES:
        return f"the recipient's domain could not be looked up ({text})"
    if r.get("last_code") is None:
        return f"the recipient's server did not answer ({text})"
    code = " ".join(str(p) for p in (r["last_code"], r.get("last_enhanced")) if p)
    return f"the recipient's server answered {code} {text}"


# A sender node counts as live when seen within this many heartbeats (as routing judges it).
HEARTBEATS_TO_BE_LIVE = 3


def explain(
    detail: Mapping[str, Any], suppressed: Mapping[str, str], live_ips: list[str] | None = None
) -> str:
    """One or two sentences on where the message is and why. `live_ips`: the IPs its
    organization's pool has on live sender nodes (None: not looked up)."""
    status = detail["status"]
    recipients = detail.get("recipients", [])
    on_list = [r["address"] for r in recipients if r["address"].lower() in suppressed]
    note = f" On the suppression list: {', '.join(on_list)}." if on_list else ""
    reason = detail.get("reason")
    if status == "received":
        return "Accepted; waiting to be checked." + note
    if status == "validated":
        return "Checked; waiting to be counted against the monthly quota." + note
    if status == "admitted":
        if live_ips == []:
            return (
                "Waiting: no live sender node holds an IP of this organization's IP pool, so"
                " there is nowhere to send it from; it leaves when one does (start a sender"
                " node with one of the pool's IPs, or `remails org set-pool ORG_ID none`)." + note
            )
        return "Admitted; waiting to be routed to an outbound IP." + note
    if status in ("routed", "sending", "attempted"):
        return f"Being delivered from {detail.get('outbound_ip') or 'an outbound IP'}." + note
    if status == "deferred":
        waiting = [r for r in recipients if r["status"] in ("deferred", "pending")]
        why = "; ".join(f"{r['address']}: {_reply(r)}" for r in waiting) or reason or "a temporary failure"
        nxt = detail.get("next_attempt_at")
        when = f" Next try at {_at(nxt)}" if nxt else " Next try at the next sweep"
        shaped = _last_wait(detail)
        return f"Deferred: {why}.{when}; it gives up at {_at(detail['expires_at'])}.{shaped}" + note
    if status == "delivered":
        return "Delivered." + note
    if status == "bounced":
        refused = [r for r in recipients if r["status"] == "bounced"]
        why = "; ".join(f"{r['address']}: {_reply(r)}" for r in refused) or reason or "refused"
        return f"Bounced (refused permanently): {why}." + note
    if status == "failed":
        return f"Failed: {reason or 'not delivered'}." + note
    if status == "held":
        return f"Held: {reason or 'waiting for an operator'}." + note
    if status == "rejected":
        return f"Rejected: {reason or 'refused at validation'}." + note
    return f"{status}." + note


def _last_wait(detail: Mapping[str, Any]) -> str:
    """Why the last attempt waited before it started (site shaping, a suspension), if it did."""
    log = detail.get("attempt_log") or []
    last = log[-1] if log else {}
    if not last.get("waited"):
        return ""
    return f" The last attempt waited ({last['waited']}) to send to site {last.get('site') or '?'}."


def retry_refusal(detail: Mapping[str, Any], suppressed: Mapping[str, str]) -> str | None:
    """Why a retry would do nothing, or None when it can move something."""
    status = detail["status"]
    if status == "delivered":
        return "the message was delivered; there is nothing to retry"
    if status == "rejected":
        return f"the message was rejected ({detail.get('reason') or 'invalid'}); send a corrected one"
    if status in _IN_PROGRESS:
        return f"the message is still in progress ({status})"
    if status == "held":
        return None
    undelivered = [r["address"] for r in detail.get("recipients", []) if r["status"] in UNDELIVERED]
    if not undelivered:
        return "no recipient is left to deliver to"
    if all(a.lower() in suppressed for a in undelivered):
        return (
            f"every undelivered recipient is on the suppression list ({', '.join(undelivered)});"
            " remove them from it first"
        )
    return None
