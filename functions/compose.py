"""Build an RFC 5322 message from an HTTP send request: the stdlib `email` package does the MIME.

text → text/plain; html → text/html; both → multipart/alternative; inline parts (with a
content id) → multipart/related around the html; attachments → multipart/mixed.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from remails.addresses import parse_mailbox
from remails.errors import InvalidInput
from remails.message_headers import MAX_LINE_OCTETS, longest_line
from remails.text import ClientInput

__all__ = ["MAX_RECIPIENTS", "Attachment", "EmailAddress", "SendRequest", "compose"]

MAX_RECIPIENTS = 50
# Headers we write ourselves, or that change the structure of the message.
_STRUCTURAL = {
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "dkim-signature",
    "received",
    "return-path",
    "sender",
}
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'


def _no_line_breaks(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks")
    return value


class EmailAddress(ClientInput):
    email: Annotated[str, Field(max_length=320, examples=["ada@example.com"])]
    name: Annotated[str | None, Field(default=None, max_length=200)] = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        # One bare address; UTF-8 is allowed (RFC 6531), delivered with SMTPUTF8 when it must be.
        mailbox = parse_mailbox(value)
        if mailbox is None or mailbox.local.startswith('"'):  # quoted local parts: raw API only
            raise ValueError("is not a valid email address")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _no_line_breaks(value)


def _address(value: Any) -> Any:
    return {"email": value} if isinstance(value, str) else value


AddressField = Annotated[EmailAddress, Field(description="an address, or {email, name}")]


class Attachment(ClientInput):
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    content_type: Annotated[str, Field(pattern=r"^[\w.+-]+/[\w.+-]+$", max_length=127)] = (
        "application/octet-stream"
    )
    content: Annotated[str, Field(description="base64")]
    content_id: Annotated[str | None, Field(default=None, max_length=255, pattern=r"^[^<>\s]+$")] = None

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        return _no_line_breaks(value)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
        return value


class SendRequest(ClientInput):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    free_text: ClassVar[frozenset[str]] = frozenset({"text", "html"})  # bodies, not headers

    from_: Annotated[AddressField, Field(alias="from")]
    to: list[AddressField] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    cc: list[AddressField] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[AddressField] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    reply_to: list[AddressField] = Field(default_factory=list, max_length=10)
    subject: Annotated[str, Field(max_length=998)] = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    label: Annotated[str | None, Field(default=None, max_length=100)] = None
    metadata: dict[str, Annotated[str, Field(max_length=1000)]] = Field(default_factory=dict, max_length=50)

    @field_validator("from_", mode="before")
    @classmethod
    def _from(cls, value: Any) -> Any:
        return _address(value)

    @field_validator("to", "cc", "bcc", "reply_to", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        if isinstance(value, str | dict):
            value = [value]
        return [_address(v) for v in value] if isinstance(value, list) else value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return _no_line_breaks(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name) or len(name) > 100:
                raise ValueError(f"{name!r} is not a valid header name")
            lowered = name.lower()
            if lowered in _STRUCTURAL or lowered.startswith("content-"):
                raise ValueError(f"{name} is set by the service and cannot be given")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"{name} must not contain line breaks")
            if len(header_value) > 998:
                raise ValueError(f"{name} is longer than 998 characters")
        return value

    @model_validator(mode="after")
    def _whole(self) -> SendRequest:
        count = len(self.to) + len(self.cc) + len(self.bcc)
        if count == 0:
            raise ValueError("to: at least one recipient is needed in to, cc or bcc")
        if count > MAX_RECIPIENTS:
            raise ValueError(f"to: at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
        if self.text is None and self.html is None:
            raise ValueError("text: text or html is needed")
        if any(a.content_id for a in self.attachments) and self.html is None:
            raise ValueError("attachments: inline attachments (content_id) need html")
        return self

    @property
    def recipients(self) -> list[str]:
        return [a.email for a in (*self.to, *self.cc, *self.bcc)]

    @property
    def utf8_headers(self) -> bool:
        """Some header address has a UTF-8 local part: the header block is UTF-8 (RFC 6532)."""
        shown = (self.from_, *self.to, *self.cc, *self.reply_to)
        return any(not a.email.rpartition("@")[0].isascii() for a in shown)


def _header_address(a: EmailAddress) -> Address:
    mailbox = parse_mailbox(a.email)
    if mailbox is None:  # validated by the model already
        raise InvalidInput("is not one address", field="to")
    # An ASCII local part keeps the header ASCII: the domain goes in as A-labels (RFC 5890).
    # A UTF-8 one can only be written as UTF-8 (RFC 6532), and then needs SMTPUTF8 anyway.
    domain = mailbox.domain if mailbox.needs_smtputf8 else mailbox.domain_ascii
    return Address(display_name=a.name or "", username=mailbox.local, domain=domain)


def _cte(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return (
        "7bit"
        if text.isascii() and all(len(line) <= MAX_LINE_OCTETS for line in lines)
        else "quoted-printable"
    )


def compose(request: SendRequest, *, message_id: str, now: datetime) -> bytes:
    """The message as bytes with CRLF line endings and no line over 998 octets; Bcc never
    appears in it."""
    policy = SMTPUTF8 if request.utf8_headers else SMTP
    message = EmailMessage(policy=policy)
    message["From"] = _header_address(request.from_)
    if request.to:
        message["To"] = [_header_address(a) for a in request.to]
    if request.cc:
        message["Cc"] = [_header_address(a) for a in request.cc]
    if request.reply_to:
        message["Reply-To"] = [_header_address(a) for a in request.reply_to]
    message["Subject"] = request.subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id
    for name, value in request.headers.items():
        message[name] = value

    inline = [a for a in request.attachments if a.content_id]
    files = [a for a in request.attachments if not a.content_id]
    # Quoted-printable for non-ASCII text, so the message is 7-bit clean for any next hop.
    if request.text is not None:
        message.set_content(request.text, cte=_cte(request.text))
        if request.html is not None:
            message.add_alternative(request.html, subtype="html", cte=_cte(request.html))
    elif request.html is not None:
        message.set_content(request.html, subtype="html", cte=_cte(request.html))
    if inline:
        html_part = message.get_body(("html",))
        if not isinstance(html_part, EmailMessage):
            raise InvalidInput("inline attachments need an html body", field="attachments")
        for a in inline:
            maintype, _, subtype = a.content_type.partition("/")
            html_part.add_related(
                base64.b64decode(a.content),
                maintype,
                subtype,
                cid=f"<{a.content_id}>",
                filename=a.filename,
                disposition="inline",
            )
    for a in files:
        maintype, _, subtype = a.content_type.partition("/")
        message.add_attachment(base64.b64decode(a.content), maintype, subtype, filename=a.filename)
    data = message.as_bytes(policy=policy)
    if longest_line(data) > MAX_LINE_OCTETS:  # the encodings above make this unreachable
        raise ValueError("composed a line longer than 998 octets")
    return data
