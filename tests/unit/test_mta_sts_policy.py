"""MTA-STS decisions (RFC 8461): the TXT record, the policy body, MX name matching."""

from __future__ import annotations

import pytest

from remails_sender_node.mta_sts import (
    MAX_AGE_LIMIT,
    Policy,
    PolicyError,
    allowed_hosts,
    mx_matches,
    parse_policy,
    parse_sts_record,
)

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


def test_the_policy_body_is_read_with_every_mx() -> None:
    assert parse_policy(POLICY, "20260101") == Policy(
        "20260101", "enforce", ("mail.example.com", "*.example.net"), 604800
    )


def test_unknown_keys_are_ignored_and_lf_lines_accepted() -> None:
    policy = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400\nextension: x\n", "1")
    assert policy.mode == "testing" and policy.mx == ("a.test",)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 60\n", "mx"),
        ("version: STSv1\nmode enforce\n", "':'"),
    ],
)
def test_a_malformed_policy_is_refused(body: str, complaint: str) -> None:
    with pytest.raises(PolicyError, match=complaint):
        parse_policy(body, "1")


def test_mode_none_needs_no_mx_and_max_age_is_capped_at_a_year() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n", "1").max_age == MAX_AGE_LIMIT


@pytest.mark.parametrize(
    ("texts", "policy_id"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),
        (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # two records: no policy (§3.1)
        (["v=STSv1;"], None),
        (["v=STSv1; id=not-alnum"], None),
        (["v=STSv1; id=" + "a" * 33], None),
        ([], None),
    ],
)
def test_the_sts_txt_record(texts: list[str], policy_id: str | None) -> None:
    assert parse_sts_record(texts) == policy_id


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("MAIL.Example.com.", "mail.example.com", True),
        ("mx1.example.com", "*.example.com", True),
        ("example.com", "*.example.com", False),  # the wildcard stands for one label, not none
        ("a.b.example.com", "*.example.com", False),  # nor for two (§4.1)
        ("mail.example.com", "example.com", False),
        ("evilexample.com", "*.example.com", False),
        ("mail.example.org", "mail.example.com", False),
    ],
)
def test_mx_names_match_the_policy_like_rfc8461(host: str, pattern: str, matches: bool) -> None:
    assert mx_matches(host, pattern) is matches


def test_allowed_hosts_keeps_the_mx_order() -> None:
    policy = parse_policy(POLICY, "1")
    hosts = ["b.example.net", "other.test", "mail.example.com", "a.b.example.net"]
    assert allowed_hosts(policy, hosts) == ["b.example.net", "mail.example.com"]
