import random
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from remails.outcomes import (
    RecipientResult,
    RetryPolicy,
    classify,
    is_hard_bounce,
    message_outcome,
    next_attempt_at,
    split_enhanced,
)
from remails_functions.route import choose_egress
from remails_functions.validate import decide
from remails_sender_node.mx import order_mx

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(first_seconds=60, max_seconds=1800)


def test_retry_schedule_doubles_to_the_cap_and_stops_at_expiry() -> None:
    expires = NOW + timedelta(hours=24)
    delays = [(next_attempt_at(n, NOW, expires, POLICY, 0.0) - NOW).total_seconds() for n in range(1, 8)]  # type: ignore[operator]
    assert delays == [60, 120, 240, 480, 960, 1800, 1800]
    assert next_attempt_at(3, NOW, NOW + timedelta(seconds=100), POLICY, 0.0) is None


def test_bounce_classification() -> None:
    assert classify(RecipientResult(250, "2.0.0", "ok")) == "delivered"
    assert classify(RecipientResult(451, "4.3.0", "later")) == "deferred"
    assert classify(RecipientResult(550, "5.7.1", "spam")) == "bounced"
    assert classify(RecipientResult(None, "4.4.1", "no answer")) == "deferred"
    assert classify(RecipientResult(None, "5.1.2", "no such domain")) == "bounced"
    assert classify(RecipientResult(None, None, "?")) == "deferred"


def test_only_address_failures_are_hard_bounces() -> None:
    assert is_hard_bounce(RecipientResult(550, "5.1.1", "no such user"))
    assert is_hard_bounce(RecipientResult(None, "5.1.10", "null MX"))
    assert is_hard_bounce(RecipientResult(550, None, "mailbox unavailable"))
    assert not is_hard_bounce(RecipientResult(550, "5.7.1", "blocked as spam"))
    assert not is_hard_bounce(RecipientResult(552, "5.2.2", "mailbox full"))
    assert not is_hard_bounce(RecipientResult(450, "4.1.1", "try later"))


def test_message_outcome_from_recipients() -> None:
    assert message_outcome(["delivered", "suppressed"]) == "delivered"
    assert message_outcome(["delivered", "deferred"]) == "deferred"
    assert message_outcome(["delivered", "bounced"]) == "bounced"
    assert message_outcome(["bounced", "failed"]) == "failed"
    assert message_outcome(["suppressed"]) == "failed"


def test_split_enhanced() -> None:
    assert split_enhanced("5.1.1 No such user") == ("5.1.1", "No such user")
    assert split_enhanced("Ok") == (None, "Ok")


def test_route_spreads_over_the_pool_and_moves_on_retry() -> None:
    ips = ["127.0.0.4", "127.0.0.2", "127.0.0.3"]
    chosen = [choose_egress(ips, uuid4(), 0) for _ in range(3000)]
    counts = {ip: chosen.count(ip) for ip in ips}
    assert all(800 < n < 1200 for n in counts.values()), counts
    message = UUID(int=7)
    assert choose_egress(ips, message, 0) == choose_egress(list(reversed(ips)), message, 0)
    assert choose_egress(ips, message, 1) != choose_egress(ips, message, 0)
    assert choose_egress([], message, 0) is None


def test_mx_order_by_preference_with_equal_preferences_shuffled() -> None:
    records = [(20, "b.test."), (10, "a2.test."), (10, "a1.test."), (30, "c.test.")]
    orders = {tuple(order_mx(list(records), random.Random(seed))) for seed in range(20)}
    assert orders == {("a1.test", "a2.test", "b.test", "c.test"), ("a2.test", "a1.test", "b.test", "c.test")}


HEADERS = b"From: App <app@mail.example.test>\r\nTo: x@dest.test\r\nSubject: hi"


def test_validation_aligns_from_with_the_verified_sender_domain() -> None:
    ok = decide(HEADERS, "bounce@example.test", ["example.test"], ["x@dest.test"], set())
    assert ok.reject_reason is None and ok.suppressed == []
    foreign = decide(
        HEADERS.replace(b"mail.example.test", b"other.test"),
        "a@example.test",
        ["example.test"],
        ["x@d.test"],
        set(),
    )
    assert foreign.reject_reason and "does not align" in foreign.reject_reason
    unverified = decide(HEADERS, "a@example.test", [], ["x@d.test"], set())
    assert unverified.reject_reason and "not verified" in unverified.reject_reason
    no_from = decide(b"Subject: hi", "a@example.test", ["example.test"], ["x@d.test"], set())
    assert no_from.reject_reason == "message has no From header"


def test_validation_lists_suppressed_recipients_and_rejects_when_none_are_left() -> None:
    some = decide(
        HEADERS, "a@example.test", ["example.test"], ["X@dest.test", "y@dest.test"], {"x@dest.test"}
    )
    assert some.reject_reason is None and some.suppressed == ["X@dest.test"]
    none_left = decide(HEADERS, "a@example.test", ["example.test"], ["x@dest.test"], {"x@dest.test"})
    assert none_left.reject_reason == "every recipient is on the suppression list"


def test_the_first_digit_of_the_reply_code_decides_the_outcome() -> None:
    def outcome(code: int) -> str:
        return classify(RecipientResult(code, None, "reply"))

    assert [outcome(c) for c in (200, 250, 299)] == ["delivered"] * 3
    assert [outcome(c) for c in (300, 354, 421, 499)] == ["deferred"] * 4
    assert [outcome(c) for c in (500, 554, 599)] == ["bounced"] * 3
    assert outcome(600) == "deferred"


def test_mailbox_unavailable_codes_without_enhanced_status_are_hard_bounces() -> None:
    assert is_hard_bounce(RecipientResult(551, None, "user not local"))
    assert is_hard_bounce(RecipientResult(553, None, "mailbox name not allowed"))
    assert not is_hard_bounce(RecipientResult(554, None, "transaction failed"))
    assert not is_hard_bounce(RecipientResult(552, None, "storage exceeded"))


def test_retry_time_carries_the_jitter() -> None:
    expires = NOW + timedelta(hours=24)
    assert next_attempt_at(1, NOW, expires, POLICY, 1.0) == NOW + timedelta(seconds=66)
    assert next_attempt_at(1, NOW, expires, POLICY, -1.0) == NOW + timedelta(seconds=54)


def test_no_retry_is_scheduled_at_the_moment_the_message_expires() -> None:
    assert next_attempt_at(1, NOW, NOW + timedelta(seconds=60), POLICY, 0.0) is None
    assert next_attempt_at(1, NOW, NOW + timedelta(seconds=61), POLICY, 0.0) == NOW + timedelta(seconds=60)


def test_a_recipient_not_yet_tried_keeps_the_message_deferred() -> None:
    assert message_outcome(["delivered", "pending"]) == "deferred"
    assert message_outcome(["pending", "bounced"]) == "deferred"


def test_each_retry_moves_to_the_next_ip_of_the_pool_and_wraps_around() -> None:
    ips = ["127.0.0.4", "127.0.0.2", "127.0.0.3"]
    pool = sorted(ips)
    for n in range(50):
        message = UUID(int=n)
        first = pool.index(choose_egress(ips, message, 0))  # type: ignore[arg-type]
        walk = [choose_egress(ips, message, attempt) for attempt in range(4)]
        assert walk == [pool[(first + k) % 3] for k in range(4)]


def test_mx_host_names_are_lower_cased_and_lose_only_the_root_dot() -> None:
    assert order_mx([(10, "MX.INBOX.")], random.Random(0)) == ["mx.inbox"]
    assert order_mx([(10, "mx.example.test")], random.Random(0)) == ["mx.example.test"]


def test_envelope_sender_is_checked_against_the_most_specific_verified_domain() -> None:
    verified = ["example.test", "a.example.test"]
    foreign = HEADERS.replace(b"mail.example.test", b"other.test")
    result = decide(foreign, "bounce@a.example.test", verified, ["x@dest.test"], set())
    assert result.reject_reason == (
        "From domain other.test does not align with the sender domain a.example.test"
    )


def test_rejection_reasons_name_domains_in_lower_case() -> None:
    unverified = decide(HEADERS, "a@Other.Test", ["example.test"], ["x@d.test"], set())
    assert unverified.reject_reason == "envelope sender domain other.test is not verified for this project"
    mixed = HEADERS.replace(b"mail.example.test", b"Other.Test")
    foreign = decide(mixed, "a@example.test", ["example.test"], ["x@d.test"], set())
    assert foreign.reject_reason == (
        "From domain other.test does not align with the sender domain example.test"
    )


def test_envelope_sender_with_a_quoted_at_sign_uses_the_domain_after_the_last_at() -> None:
    ok = decide(HEADERS, '"a@b"@example.test', ["example.test"], ["x@dest.test"], set())
    assert ok.reject_reason is None


def test_a_rejected_message_lists_no_suppressed_recipients() -> None:
    for result in (
        decide(HEADERS, "a@other.test", ["example.test"], ["x@d.test"], {"x@d.test"}),
        decide(b"Subject: hi", "a@example.test", ["example.test"], ["x@d.test"], {"x@d.test"}),
        decide(
            HEADERS.replace(b"mail.example.test", b"other.test"),
            "a@example.test",
            ["example.test"],
            ["x@d.test"],
            {"x@d.test"},
        ),
    ):
        assert result.reject_reason is not None
        assert result.suppressed == []


def test_when_every_recipient_is_suppressed_all_are_listed() -> None:
    result = decide(
        HEADERS,
        "a@example.test",
        ["example.test"],
        ["X@dest.test", "y@dest.test"],
        {"x@dest.test", "y@dest.test"},
    )
    assert result.reject_reason == "every recipient is on the suppression list"
    assert result.suppressed == ["X@dest.test", "y@dest.test"]


def test_a_from_domain_that_only_upper_cases_to_the_verified_domain_does_not_align() -> None:
    # "straße" and "strasse" are different names (IDNA2008), though "ß".upper() is "SS".
    headers = "From: App <app@straße.example>\r\nTo: x@dest.test\r\nSubject: hi".encode()
    result = decide(headers, "a@strasse.example", ["strasse.example"], ["x@dest.test"], set())
    assert result.reject_reason == (
        "From domain straße.example does not align with the sender domain strasse.example"
    )
