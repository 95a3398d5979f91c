from uuid import uuid4

from remails.db.orgs import SenderFacts
from remails.errors import (
    OrganizationBlocked,
    QuotaExhausted,
    SenderDomainNotAllowed,
    TooManyRecipients,
)
from remails.sending_policy import address_domain, check_sender
from remails_smtp_edge.policy import check_recipient_count, trusted_project
from remails_smtp_edge.replies import with_enhanced_code
from remails_smtp_edge.throttle import AuthThrottle


def facts(block: str = "not_blocked", quota_left: int = 10, domains: list[str] | None = None) -> SenderFacts:
    return SenderFacts(
        uuid4(), uuid4(), block, quota_left, domains if domains is not None else ["example.test"]
    )


def test_sender_checks_in_order_block_domain_quota() -> None:
    assert check_sender(facts(), "a@example.test") is None
    assert check_sender(facts(), "a@b.example.test") is None
    assert isinstance(check_sender(facts(block="no_sending"), "a@example.test"), OrganizationBlocked)
    assert isinstance(check_sender(facts(), "a@notexample.test"), SenderDomainNotAllowed)
    assert isinstance(check_sender(facts(domains=[]), "a@example.test"), SenderDomainNotAllowed)
    assert isinstance(check_sender(facts(quota_left=0), "a@example.test"), QuotaExhausted)


def test_refusal_replies_carry_rfc3463_codes() -> None:
    assert str(SenderDomainNotAllowed().smtp).startswith("553 5.7.1")
    assert str(OrganizationBlocked().smtp).startswith("554 5.7.1")
    assert str(QuotaExhausted().smtp).startswith("452 4.5.3")
    assert str(TooManyRecipients().smtp).startswith("452 4.5.3")


def test_address_domain() -> None:
    assert address_domain("a@Example.TEST") == "example.test"
    assert address_domain("a@localhost") is None
    assert address_domain("@example.test") is None
    assert address_domain("nobody") is None


def test_recipient_limit() -> None:
    assert check_recipient_count(49, 50) is None
    assert isinstance(check_recipient_count(50, 50), TooManyRecipients)


def test_trusted_project() -> None:
    networks = {"127.0.0.0/8": "p1", "10.0.0.0/24": "p2"}
    assert trusted_project("127.0.0.9", networks) == "p1"
    assert trusted_project("10.0.0.200", networks) == "p2"
    assert trusted_project("10.0.1.1", networks) is None
    assert trusted_project("::1", networks) is None


def test_enhanced_codes_are_added_where_missing_only() -> None:
    assert with_enhanced_code("250 OK") == "250 2.0.0 OK"
    assert with_enhanced_code("552 Error: Too much mail data") == "552 5.3.4 Too much mail data"
    assert with_enhanced_code("503 Error: need RCPT command") == "503 5.5.1 need RCPT command"
    assert with_enhanced_code("535 5.7.8 Authentication credentials invalid").count("5.7.8") == 1
    assert with_enhanced_code("354 End data with <CR><LF>.<CR><LF>").startswith("354 End")
    assert with_enhanced_code("334 VXNlcm5hbWU6") == "334 VXNlcm5hbWU6"
    assert with_enhanced_code("250-SIZE 1000") == "250-SIZE 1000"
    assert with_enhanced_code("220 mx.test ESMTP", greeting_or_helo=True) == "220 mx.test ESMTP"


def test_auth_throttle_blocks_after_the_limit_within_the_window() -> None:
    throttle = AuthThrottle(max_failures=3, window=60)
    keys = ["ip:192.0.2.1", "user:alice"]
    for t in range(3):
        assert not throttle.blocked(keys, now=float(t))
        throttle.record_failure(keys, now=float(t))
    assert throttle.blocked(keys, now=3.0)
    assert throttle.blocked(["ip:198.51.100.7", "user:alice"], now=3.0)  # same user, other IP
    assert not throttle.blocked(["ip:198.51.100.7", "user:bob"], now=3.0)
    assert not throttle.blocked(keys, now=61.5)  # the window slid past the failures
