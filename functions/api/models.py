"""Request and response bodies of the management API (the OpenAPI document is built from these)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field

from remails.addresses import parse_mailbox
from remails.text import ClientInput

__all__ = [
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyOut",
    "AttemptOut",
    "DnsRecordOut",
    "DomainCreate",
    "DomainOut",
    "DomainVerification",
    "IpPoolAssign",
    "IpPoolCreate",
    "IpPoolOut",
    "MessageAccepted",
    "MessageDetail",
    "MessagePage",
    "MessageSummary",
    "OrganizationCreate",
    "OrganizationOut",
    "OrganizationUpdate",
    "ProjectCreate",
    "ProjectOut",
    "ProjectUpdate",
    "QuotaOut",
    "RawSendRequest",
    "RecipientOut",
    "SmtpCredentialCreate",
    "SmtpCredentialCreated",
    "SmtpCredentialOut",
    "StatisticsOut",
    "SuppressionCreate",
    "SuppressionOut",
    "SuppressionPage",
]

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\r\n]+$")]
Role = Literal["read_only", "maintainer", "admin"]
BlockStatus = Literal["not_blocked", "no_sending", "full_freeze"]
Quota = Annotated[int, Field(ge=0, le=1_000_000_000)]
Retention = Annotated[int, Field(ge=1, le=3650)]


_In = ClientInput


def _one_address(value: str) -> str:
    if parse_mailbox(value) is None:
        raise ValueError("is not one bare address (local@domain)")
    return value


NotificationEmail = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_one_address)]


class OrganizationCreate(_In):
    name: Name
    monthly_quota: Quota | None = None


class OrganizationUpdate(_In):
    name: Name | None = None
    monthly_quota: Quota | None = Field(default=None, description="operator only")
    block_status: BlockStatus | None = Field(default=None, description="operator only")
    block_reason: Annotated[str, Field(max_length=500, pattern=r"^[^\r\n]*$")] | None = Field(
        default=None, description="operator only: why, with block_status (shown to the organization)"
    )
    notification_email: NotificationEmail | None = Field(
        default=None, description="where notifications are mailed (null clears it)"
    )


class QuotaOut(BaseModel):
    limit: int
    used: int
    resets_at: datetime


class OrganizationOut(BaseModel):
    id: UUID
    name: str
    monthly_quota: int
    quota_used: int
    quota_period_start: date
    block_status: BlockStatus
    ip_pool_id: UUID | None
    created_at: datetime
    notification_email: str | None = None
    block_reason: str | None = None
    quota: QuotaOut


class ProjectCreate(_In):
    name: Name
    retention_days: Retention | None = None
    sandbox: bool = Field(
        default=False,
        description="messages are validated, counted and DKIM-signed but never sent to an MX;"
        " they end `delivered` with a `sandbox: not sent` note and their signed bytes are kept",
    )


class ProjectUpdate(_In):
    name: Name | None = None
    retention_days: Retention | None = None


class ProjectOut(BaseModel):
    id: UUID
    organization_id: UUID
    name: str
    retention_days: int
    created_at: datetime
    sandbox: bool


class DomainCreate(_In):
    domain: Annotated[str, Field(min_length=3, max_length=253)]
    project_ids: Annotated[list[UUID], Field(min_length=1, max_length=100)]


class DnsRecordOut(BaseModel):
    type: str
    name: str
    value: str


class DomainOut(BaseModel):
    id: UUID
    organization_id: UUID
    domain: str
    dkim_selector: str
    verified: bool
    verified_at: datetime | None
    status: Literal["pending", "verified", "invalid"] = "pending"
    project_ids: list[UUID]
    dns_records: list[DnsRecordOut]
    return_path: str | None = Field(default=None, description="the return-path subdomain (rp.<domain>)")


class RecordCheckOut(BaseModel):
    ok: bool
    found: list[str]
    expected: str
    reason: str | None = Field(default=None, description="why the check failed, in words")


class DomainVerification(BaseModel):
    domain: str
    verified: bool
    checks: dict[str, RecordCheckOut]
    return_path: dict[str, Any] | None = Field(default=None, description="the return-path subdomain's check")


class SmtpCredentialCreate(_In):
    description: Annotated[str, Field(max_length=200)] = ""


class SmtpCredentialOut(BaseModel):
    id: UUID
    project_id: UUID
    username: str
    created_at: datetime


class SmtpCredentialCreated(SmtpCredentialOut):
    password: str = Field(description="shown once, never again")


class ApiKeyCreate(_In):
    role: Role = "maintainer"
    project_id: UUID | None = None
    description: Annotated[str, Field(max_length=200)] = ""


class ApiKeyOut(BaseModel):
    id: UUID
    organization_id: UUID | None
    project_id: UUID | None
    role: Role
    created_at: datetime
    description: str = Field(default="", description="the key's name")


class ApiKeyCreated(ApiKeyOut):
    token: str = Field(description="shown once, never again")


class MessageAccepted(BaseModel):
    id: UUID
    message_id: str
    status: str


def _bare_address(value: str) -> str:
    """Exactly one bare address (RFC 5321, UTF-8 per RFC 6531), kept as given: the string
    checked here is the string the sender puts in MAIL FROM / RCPT TO."""
    if parse_mailbox(value) is None:
        raise ValueError("is not one bare address (local@domain, no name, brackets or list)")
    return value


BareAddress = Annotated[str, Field(max_length=320), AfterValidator(_bare_address)]


class RawSendRequest(_In):
    mail_from: BareAddress
    recipients: Annotated[list[BareAddress], Field(min_length=1, max_length=50)]
    raw: Annotated[str, Field(min_length=1, description="the RFC 5322 message, base64")]
    label: Annotated[str | None, Field(max_length=100)] = None
    metadata: dict[str, Annotated[str, Field(max_length=1000)]] = Field(default_factory=dict, max_length=50)


class _MessageFields(BaseModel):
    id: UUID
    organization_id: UUID
    project_id: UUID
    mail_from: str
    message_id_header: str
    status: str
    reason: str | None
    label: str | None
    attempts: int
    size: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class MessageSummary(_MessageFields):
    recipients: list[str]


class MessagePage(BaseModel):
    messages: list[MessageSummary]
    next_cursor: str | None


class RecipientOut(BaseModel):
    address: str
    status: str
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None
    attempts: int
    delivered_at: datetime | None
    suppressed: bool = Field(default=False, description="the address is on the suppression list now")
    suppression_reason: str | None = None


class AttemptOut(BaseModel):
    domain: str
    recipients: list[str]
    mx_host: str | None
    source_ip: str | None
    tls_version: str | None
    code: int | None
    enhanced: str | None
    text: str | None
    duration_ms: int
    started_at: datetime
    site: str | None = Field(default=None, description="the destination site: its MX host names")
    waited: str | None = Field(default=None, description="why the attempt waited before it started")


class MessageDetail(_MessageFields):
    outbound_ip: str | None
    metadata: dict[str, Any]
    next_attempt_at: datetime | None
    expires_at: datetime
    recipients: list[RecipientOut]
    attempt_log: list[AttemptOut]
    explanation: str = Field(default="", description="where the message is and why, in words")


class SuppressionCreate(_In):
    address: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    reason: Annotated[str, Field(max_length=200)] = "added by API"


class SuppressionOut(BaseModel):
    address: str
    reason: str
    created_at: datetime


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionOut]
    next_cursor: str | None


class IpPoolCreate(_In):
    name: Name
    ips: Annotated[list[str], Field(min_length=1, max_length=256)]


class IpPoolOut(BaseModel):
    id: UUID
    name: str
    ips: list[str]
    created_at: datetime


class IpPoolAssign(_In):
    ip_pool_id: UUID | None = Field(description="null returns the organization to the shared pool")


class StatisticsRow(BaseModel):
    day: date
    status: str
    count: int


class StatisticsOut(BaseModel):
    organization_id: UUID
    days: int
    rows: list[StatisticsRow]
