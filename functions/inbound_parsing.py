"""Reading what comes back to the inbound MX: bounces, complaints, DMARC aggregate reports.

Pure functions of the bytes: DSNs (RFC 3464) by their delivery-status part, other bounces by
`flufl.bounce`'s detectors, complaints by their feedback-report part (RFC 5965), DMARC reports
(RFC 7489 appendix C) as XML, gzip or zip, with `defusedxml` and caps on the decompressed size
(applied while inflating, whatever an archive declares) and on the record count.
"""

from __future__ import annotations

import email
import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from typing import Any, Literal

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from flufl.bounce import all_failures

from remails.outcomes import RecipientResult, split_enhanced

__all__ = [
    "MAX_REPORT_BYTES",
    "MAX_REPORT_RECORDS",
    "Complaint",
    "DmarcReport",
    "Failure",
    "RefusedReport",
    "find_complaint",
    "find_failures",
    "parse_dmarc",
]

MAX_REPORT_BYTES = 20 * 1024 * 1024  # decompressed XML of one report
MAX_REPORT_RECORDS = 10_000
MAX_ZIP_MEMBERS = 4


class RefusedReport(ValueError):
    """The input is not something we take (malformed, too big, not ours); the text says why."""


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=policy.compat32)


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, str):  # a parser that left it as text: read the blocks ourselves
        return [
            email.message_from_string(b.strip() + "\n") for b in re.split(r"\r?\n\r?\n", payload) if b.strip()
        ]
    return []


def _address_of(value: str | None) -> str:
    """`rfc822; bob@example.net` → `bob@example.net`."""
    text = (value or "").partition(";")[2] or (value or "")
    return text.strip().strip("<>").lower()


# -- bounces -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One recipient's fate as a bounce reports it."""

    recipient: str  # as the report names it (may differ from ours: aliases, rewriting)
    action: Literal["failed", "delayed"]
    code: int | None
    enhanced: str | None
    text: str

    @property
    def result(self) -> RecipientResult:
        return RecipientResult(self.code, self.enhanced, self.text)


_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
_SMTP_CODE = re.compile(r"^\s*([245]\d\d)[\s-]")


def _dsn_failure(block: Message) -> Failure | None:
    action = (block.get("Action") or "").strip().lower()
    status_match = _STATUS.match(block.get("Status") or "")
    enhanced = ".".join(status_match.groups()) if status_match else None
    diagnostic = " ".join((block.get("Diagnostic-Code") or "").split())
    diag_type, _, diag_text = diagnostic.partition(";")
    diag_text = diag_text.strip() if diag_text else diag_type.strip()
    code_match = _SMTP_CODE.match(diag_text) if diag_type.strip().lower() == "smtp" else None
    code = int(code_match.group(1)) if code_match else None
    if enhanced is None and diag_text:
        enhanced = split_enhanced(diag_text.removeprefix(str(code or "")).strip())[0]
    if action == "failed" or (not action and enhanced and enhanced.startswith("5.")):
        kind: Literal["failed", "delayed"] = "failed"
    elif action == "delayed":
        kind = "delayed"
    else:  # delivered, relayed, expanded: nothing for us to record
        return None
    if kind == "failed" and enhanced is not None and not enhanced.startswith("5."):
        enhanced = "5.0.0"  # a failure is permanent whatever its status says
    recipient = _address_of(block.get("Original-Recipient") or block.get("Final-Recipient"))
    return Failure(
        recipient, kind, code, enhanced or ("5.0.0" if kind == "failed" else "4.0.0"), diag_text[:500]
    )


def find_failures(raw: bytes) -> list[Failure]:
    """Each recipient a bounce reports as failed or delayed: an RFC 3464 DSN's per-recipient
    fields when it has them, else what `flufl.bounce` detects in other dialects."""
    message = _parse(raw)
    failures: list[Failure] = []
    dsn_seen = False
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        dsn_seen = True
        for block in _field_blocks(part)[1:]:  # the first block is about the whole message
            failure = _dsn_failure(block)
            if failure is not None:
                failures.append(failure)
    if dsn_seen:
        return failures
    temporary, permanent = all_failures(message)
    for address in sorted(permanent):
        text = "a bounce without a delivery-status report"
        failures.append(Failure(address.decode(errors="replace").lower(), "failed", None, "5.0.0", text))
    for address in sorted(temporary - permanent):
        text = "a delay notice without a delivery-status report"
        failures.append(Failure(address.decode(errors="replace").lower(), "delayed", None, "4.0.0", text))
    return failures


# -- complaints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Complaint:
    feedback_type: str
    original_mail_from: str  # our return path, when the reporter gives it
    original_rcpt_to: str
    reporter: str


def find_complaint(raw: bytes) -> Complaint | None:
    """An ARF report (RFC 5965): multipart/report with a message/feedback-report part."""
    message = _parse(raw)
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields: dict[str, str] = {}
        for block in _field_blocks(part):
            for name, value in block.items():
                fields.setdefault(name.lower(), " ".join(str(value).split()))
        return_path = ""
        for original in message.walk():
            if original.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
                return_path = _original_return_path(original)
                break
        return Complaint(
            feedback_type=fields.get("feedback-type", "").lower(),
            original_mail_from=(fields.get("original-mail-from") or return_path).strip("<> ").lower(),
            original_rcpt_to=fields.get("original-rcpt-to", "").strip("<> ").lower(),
            reporter=fields.get("reporting-mta") or fields.get("user-agent") or "",
        )
    return None


def _original_return_path(part: Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        headers = payload[0]
    elif isinstance(payload, str):
        headers = email.message_from_string(payload)
    else:
        return ""
    return str(headers.get("Return-Path") or "")


# -- DMARC aggregate reports ----------------------------------------------------------------


@dataclass(frozen=True)
class DmarcReport:
    org_name: str
    report_id: str
    begin: datetime
    end: datetime
    policy_domain: str
    records: list[dict[str, Any]]


_XML_TYPES = {"text/xml", "application/xml"}
_GZIP_TYPES = {"application/gzip", "application/x-gzip", "application/gzip-compressed"}
_ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/x-zip"}


def _capped_gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, MAX_REPORT_BYTES + 1)
    except zlib.error as exc:
        raise RefusedReport(f"bad gzip data: {exc}") from None
    if len(out) > MAX_REPORT_BYTES:
        raise RefusedReport(f"report larger than {MAX_REPORT_BYTES} bytes decompressed")
    return out


def _capped_unzip(data: bytes) -> bytes:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members or len(members) > MAX_ZIP_MEMBERS:
            raise RefusedReport(f"zip with {len(members)} files")
        # The declared sizes can lie: read at most the cap, whatever they say.
        with archive.open(members[0]) as fh:
            out = fh.read(MAX_REPORT_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as exc:
        raise RefusedReport(f"bad zip data: {type(exc).__name__}") from None
    if len(out) > MAX_REPORT_BYTES:
        raise RefusedReport(f"report larger than {MAX_REPORT_BYTES} bytes decompressed")
    return out


def _report_xml(raw: bytes) -> bytes:
    """The XML of the first attachment that is one: plain, gzip or zip."""
    message = _parse(raw)
    for part in message.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        name = (part.get_filename() or "").lower()
        body = part.get_payload(decode=True)
        if not isinstance(body, bytes):
            continue
        if ctype in _GZIP_TYPES or name.endswith(".gz"):
            return _capped_gunzip(body)
        if ctype in _ZIP_TYPES or name.endswith(".zip"):
            return _capped_unzip(body)
        if ctype in _XML_TYPES or name.endswith(".xml"):
            if len(body) > MAX_REPORT_BYTES:
                raise RefusedReport(f"report larger than {MAX_REPORT_BYTES} bytes")
            return body
    raise RefusedReport("no XML, gzip or zip attachment")


def _text(node: Any, path: str) -> str:
    found = node.find(path)
    return (found.text or "").strip() if found is not None and found.text else ""


def _timestamp(value: str, what: str) -> datetime:
    if not value.isdigit():
        raise RefusedReport(f"{what} is not a Unix time")
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        raise RefusedReport(f"{what} is out of range") from None


def parse_dmarc(raw: bytes) -> DmarcReport:
    """The report in a message to a rua address; raises RefusedReport for anything else."""
    xml = _report_xml(raw)
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True)
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise RefusedReport(f"refused XML: {type(exc).__name__}") from None
    if root.tag != "feedback":
        raise RefusedReport("not a DMARC aggregate report (no <feedback>)")
    org_name = _text(root, "report_metadata/org_name")
    report_id = _text(root, "report_metadata/report_id")
    policy_domain = _text(root, "policy_published/domain").lower().rstrip(".")
    if not org_name or not report_id or not policy_domain:
        raise RefusedReport("report without org_name, report_id or policy domain")
    begin = _timestamp(_text(root, "report_metadata/date_range/begin"), "begin")
    end = _timestamp(_text(root, "report_metadata/date_range/end"), "end")
    records: list[dict[str, Any]] = []
    for record in root.iterfind("record"):
        if len(records) >= MAX_REPORT_RECORDS:
            raise RefusedReport(f"more than {MAX_REPORT_RECORDS} records")
        count_text = _text(record, "row/count")
        records.append(
            {
                "source_ip": _text(record, "row/source_ip")[:64],
                "count": int(count_text) if count_text.isdigit() else 0,
                "disposition": _text(record, "row/policy_evaluated/disposition")[:32],
                "dkim": _text(record, "row/policy_evaluated/dkim")[:16],
                "spf": _text(record, "row/policy_evaluated/spf")[:16],
                "header_from": _text(record, "identifiers/header_from")[:255],
            }
        )
    return DmarcReport(org_name[:255], report_id[:255], begin, end, policy_domain, records)
