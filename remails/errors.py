"""The error tree: each refusal carries the SMTP reply and the HTTP error it renders as.

RemailsError
 ├── Refusal              a request we decline, with its reply to the peer
 │    ├── AuthRequired, SenderDomainNotAllowed, OrganizationBlocked, QuotaExhausted,
 │    ├── TooManyRecipients, MessageTooLarge, BareLineEnding, NotFound, ...
 │    └── InvalidInput ── UnsafeTarget (a webhook URL that would reach an internal address)
 ├── TemporaryFailure     something on our side failed; the peer should retry (451 4.3.0)
 ├── SetupError           the settings or the environment cannot work; start-up stops with one
 │                        line (ConfigError: a setting's value, naming the variable)
 └── DestinationError     a recipient's domain cannot be delivered to as it stands (DNS);
                          `enhanced` tells permanent (5.x.x) from temporary
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AuthRequired",
    "BareLineEnding",
    "ConfigError",
    "Conflict",
    "DestinationError",
    "DomainTaken",
    "Forbidden",
    "InvalidInput",
    "MessageTooLarge",
    "NotFound",
    "OrganizationBlocked",
    "PayloadTooLarge",
    "QuotaExhausted",
    "RateLimited",
    "Refusal",
    "RemailsError",
    "Reply",
    "SenderDomainNotAllowed",
    "SetupError",
    "TemporaryFailure",
    "TooManyRecipients",
    "UnsafeTarget",
]


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: basic code, RFC 3463 enhanced status, text."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class RemailsError(Exception):
    smtp = Reply(451, "4.3.0", "Temporary local problem, try again later")
    http_status = 500
    error_code = "internal_error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message or self.smtp.text)
        self.field = field

    @property
    def message(self) -> str:
        return str(self.args[0])

    def smtp_reply(self) -> str:
        return str(self.smtp)


class SetupError(RemailsError):
    """Settings or environment that cannot work; the message is one line saying what to fix."""


class ConfigError(SetupError):
    """A setting has a bad value; the message is one line naming the variable."""


class DestinationError(RemailsError):
    """A destination that cannot be resolved for delivery (no MX, NXDOMAIN, DNS timeout)."""

    def __init__(self, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.enhanced = enhanced
        self.text = text


class TemporaryFailure(RemailsError):
    """A failure on our side (database down, timeout); the peer should try again."""

    http_status = 503
    error_code = "temporarily_unavailable"


class Refusal(RemailsError):
    """A request we decline on purpose."""

    smtp = Reply(550, "5.7.1", "Refused")
    http_status = 400
    error_code = "refused"


class InvalidInput(Refusal):
    smtp = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
    http_status, error_code = 422, "invalid"


class UnsafeTarget(InvalidInput):
    """A webhook URL that is not https or would make us call an internal address."""

    error_code = "unsafe_target"

    def __init__(self, message: str, *, field: str | None = "url") -> None:
        super().__init__(message, field=field)


class AuthRequired(Refusal):
    smtp = Reply(530, "5.7.0", "Authentication required")
    http_status, error_code = 401, "unauthenticated"


class Forbidden(Refusal):
    smtp = Reply(550, "5.7.1", "Not permitted")
    http_status, error_code = 403, "forbidden"


class NotFound(Refusal):
    smtp = Reply(550, "5.1.1", "Not found")
    http_status, error_code = 404, "not_found"


class Conflict(Refusal):
    smtp = Reply(550, "5.7.1", "Conflict")
    http_status, error_code = 409, "conflict"


class DomainTaken(Conflict):
    """The domain is verified by another organization (which one is never said)."""

    error_code = "domain_taken"


class SenderDomainNotAllowed(Refusal):
    smtp = Reply(553, "5.7.1", "Sender domain is not a verified domain of this project")
    http_status, error_code = 403, "sender_domain_not_allowed"


class OrganizationBlocked(Refusal):
    smtp = Reply(554, "5.7.1", "Sending is blocked for this organization")
    http_status, error_code = 403, "organization_blocked"


class QuotaExhausted(Refusal):
    smtp = Reply(452, "4.5.3", "Monthly message quota used up, try again later")
    http_status, error_code = 429, "quota_exhausted"


class TooManyRecipients(Refusal):
    smtp = Reply(452, "4.5.3", "Too many recipients")
    http_status, error_code = 422, "too_many_recipients"


class MessageTooLarge(Refusal):
    smtp = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
    http_status, error_code = 413, "message_too_large"


class RateLimited(Refusal):
    smtp = Reply(450, "4.7.1", "Too many requests, slow down")
    http_status, error_code = 429, "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; retry after {retry_after} s")
        self.retry_after = retry_after


class PayloadTooLarge(Refusal):
    smtp = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
    http_status, error_code = 413, "payload_too_large"


class BareLineEnding(Refusal):
    smtp = Reply(550, "5.5.2", "Bare LF or CR in message data is not allowed; use CRLF")
    http_status, error_code = 422, "bare_line_ending"
