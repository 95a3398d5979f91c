"""The pure parts of receiving: return-path tokens, and what bounces, complaints and DMARC
reports say — no I/O."""

from __future__ import annotations

import tracemalloc
from uuid import uuid4

import pytest

from remails import return_path
from remails.config import ConfigError, load_settings
from remails.domain_records import expected_records, return_path_ok, return_path_records
from remails.outcomes import is_hard_bounce
from remails_functions.inbound_parsing import RefusedReport, find_complaint, find_failures, parse_dmarc
from tests.inbound import samples

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def test_a_bounce_token_names_its_message_and_recipient() -> None:
    message_id = uuid4()
    token = return_path.mint_bounce_token(KEY, message_id, 42)
    assert len(token) <= 64  # RFC 5321 §4.5.3.1.1: a local part is at most 64 octets
    assert token == token.lower()
    found = return_path.verify_bounce_token(KEY, token.upper())  # MTAs may change the case
    assert found == return_path.BounceToken(message_id, 42)


def test_an_altered_or_foreign_token_is_refused() -> None:
    token = return_path.mint_bounce_token(KEY, uuid4(), 7)
    assert return_path.verify_bounce_token(OTHER_KEY, token) is None
    for i in range(1, len(token)):
        swapped = "a" if token[i] != "a" else "b"
        altered = token[:i] + swapped + token[i + 1 :]
        assert return_path.verify_bounce_token(KEY, altered) is None, i
    assert return_path.verify_bounce_token(KEY, token[:-1]) is None
    assert return_path.verify_bounce_token(KEY, "postmaster") is None


def test_addresses_of_ours_and_not() -> None:
    message_id = uuid4()
    bounce = return_path.bounce_address(KEY, "Example.TEST", message_id, 5)
    assert bounce.endswith("@rp.example.test")
    found = return_path.classify_address(
        KEY, bounce, hostname="mx.remails.test", reports_domain="reports.test"
    )
    assert found is not None and found.kind == "bounce" and found.bounce is not None
    assert found.bounce.message_id == message_id and found.domain == "rp.example.test"
    domain_id = uuid4()
    report = return_path.report_address("reports.test", domain_id)
    found = return_path.classify_address(
        KEY, report, hostname="mx.remails.test", reports_domain="reports.test"
    )
    assert found is not None and found.kind == "report" and found.report_domain_id == domain_id
    for address, kind in [("fbl@reports.test", "feedback"), ("Postmaster@mx.remails.test", "postmaster")]:
        found = return_path.classify_address(
            KEY, address, hostname="mx.remails.test", reports_domain="reports.test"
        )
        assert found is not None and found.kind == kind
    for address in [
        "someone@example.test",  # a relay attempt
        "fbl@example.test",
        report.replace("@reports.test", "@elsewhere.test"),
        bounce.replace("@rp.", "@"),
        return_path.bounce_address(OTHER_KEY, "example.test", message_id, 5),
    ]:
        assert (
            return_path.classify_address(
                KEY, address, hostname="mx.remails.test", reports_domain="reports.test"
            )
            is None
        )


def test_envelope_senders_one_transaction_per_recipient_once_verified() -> None:
    message_id = uuid4()
    by_domain = {"a.test": ["x@a.test", "y@a.test"], "b.test": ["z@b.test"]}
    plain = return_path.envelope_senders(KEY, message_id, "app@example.test", None, {}, by_domain)
    assert plain == [
        ("a.test", ["x@a.test", "y@a.test"], "app@example.test"),
        ("b.test", ["z@b.test"], "app@example.test"),
    ]
    ids = {"x@a.test": 1, "y@a.test": 2, "z@b.test": 3}
    verp = return_path.envelope_senders(KEY, message_id, "app@example.test", "example.test", ids, by_domain)
    assert [(d, r) for d, r, _ in verp] == [
        ("a.test", ["x@a.test"]),
        ("a.test", ["y@a.test"]),
        ("b.test", ["z@b.test"]),
    ]
    for _, rcpts, sender in verp:
        local, _, domain = sender.partition("@")
        assert domain == "rp.example.test"
        assert return_path.verify_bounce_token(KEY, local) == return_path.BounceToken(
            message_id, ids[rcpts[0]]
        )


@pytest.mark.parametrize(
    ("raw", "code", "enhanced", "hard"),
    [
        (samples.postfix_dsn("b@rp.example.test", "bob@receiver.test"), None, "5.1.1", True),
        (samples.exim_dsn("b@rp.example.test", "bob@receiver.test"), 550, "5.0.0", False),
    ],
    ids=["postfix", "exim"],
)
def test_dsn_dialects(raw: bytes, code: int | None, enhanced: str, hard: bool) -> None:
    [failure] = find_failures(raw)
    assert failure.recipient == "bob@receiver.test"
    assert failure.action == "failed"
    assert (failure.code, failure.enhanced) == (code, enhanced)
    assert is_hard_bounce(failure.result) is hard


def test_a_delayed_dsn_is_no_failure() -> None:
    [failure] = find_failures(samples.delayed_dsn("b@rp.example.test", "bob@receiver.test"))
    assert failure.action == "delayed" and failure.enhanced == "4.4.1"


def test_a_bounce_without_delivery_status_is_detected_by_the_library() -> None:
    failures = find_failures(samples.qmail_bounce("b@rp.example.test", "bob@receiver.test"))
    assert [(f.recipient, f.action) for f in failures] == [("bob@receiver.test", "failed")]


def test_an_arf_complaint() -> None:
    complaint = find_complaint(
        samples.arf_complaint("fbl@reports.test", "bob@receiver.test", "bxyz@rp.example.test")
    )
    assert complaint is not None
    assert complaint.feedback_type == "abuse"
    assert complaint.original_mail_from == "bxyz@rp.example.test"
    assert complaint.original_rcpt_to == "bob@receiver.test"
    assert find_complaint(samples.postfix_dsn("x@y.test", "bob@receiver.test")) is None


def test_dmarc_reports_plain_gzip_zip() -> None:
    xml = samples.dmarc_xml("example.test")
    for attachment, ctype, name in [
        (xml, "text/xml", "r.xml"),
        (samples.gzipped(xml), "application/gzip", "r.xml.gz"),
        (samples.zipped(xml), "application/zip", "r.zip"),
    ]:
        report = parse_dmarc(samples.report_mail("r@reports.test", attachment, ctype, name))
        assert (report.org_name, report.report_id, report.policy_domain) == (
            "provider.test",
            "r-1",
            "example.test",
        )
        assert report.begin.timestamp() == 1764547200
        assert [(r["source_ip"], r["count"], r["dkim"], r["spf"]) for r in report.records] == [
            ("127.0.0.2", 3, "pass", "pass"),
            ("127.0.0.3", 4, "fail", "fail"),
        ]


@pytest.mark.parametrize(
    ("attachment", "ctype", "name", "why"),
    [
        (samples.zip_bomb(), "application/zip", "r.zip", "larger than"),
        (samples.gzipped(b"\0" * (64 * 1024 * 1024)), "application/gzip", "r.xml.gz", "larger than"),
        (samples.entity_attack("example.test"), "text/xml", "r.xml", "refused XML"),
        (b"<feedback><report_metadata>", "text/xml", "r.xml", "refused XML"),
        (b"not a zip", "application/zip", "r.zip", "bad zip"),
        (samples.dmarc_xml("example.test", records=3), "text/xml", "r.xml", "more than 2 records"),
    ],
    ids=["zip-bomb", "gzip-bomb", "entities", "truncated", "bad-zip", "too-many-records"],
)
def test_bad_reports_are_refused(
    attachment: bytes, ctype: str, name: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("remails_functions.inbound_parsing.MAX_REPORT_RECORDS", 2)
    with pytest.raises(RefusedReport, match=why):
        parse_dmarc(samples.report_mail("r@reports.test", attachment, ctype, name))


@pytest.mark.parametrize(
    ("attachment", "ctype", "name"),
    [
        (samples.zip_bomb(), "application/zip", "r.zip"),
        (samples.gzipped(b"\0" * (64 * 1024 * 1024)), "application/gzip", "r.xml.gz"),
    ],
    ids=["zip", "gzip"],
)
def test_a_bomb_is_never_inflated_past_the_cap(
    attachment: bytes, ctype: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap bounds what is inflated (memory), not only what is accepted afterwards."""
    monkeypatch.setattr("remails_functions.inbound_parsing.MAX_REPORT_BYTES", 1024 * 1024)
    mail = samples.report_mail("r@reports.test", attachment, ctype, name)
    tracemalloc.start()
    try:
        with pytest.raises(RefusedReport, match="larger than"):
            parse_dmarc(mail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # the bomb inflates to 64 MiB


def test_the_return_path_records_and_their_check() -> None:
    records = return_path_records("rp.example.test", "mx.remails.test", ["192.0.2.1", "2001:db8::1"])
    assert [(r.type, r.name, r.value) for r in records] == [
        ("MX", "rp.example.test", "10 mx.remails.test."),
        ("TXT", "rp.example.test", "v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"),
    ]
    spf = ["v=spf1 ip4:192.0.2.1 ip6:2001:db8::1 -all"]
    assert return_path_ok(records, ["MX.Remails.test."], spf)
    assert not return_path_ok(records, ["mx.elsewhere.test."], spf)  # bounces would not reach us
    assert not return_path_ok(records, [], spf)
    assert not return_path_ok(records, ["mx.remails.test."], ["v=spf1 ip4:192.0.2.1 -all"])  # an IP missing
    assert not return_path_ok(records, ["mx.remails.test."], [*spf, "v=spf1 -all"])  # two SPF records


def test_the_dmarc_record_names_the_rua_address() -> None:
    [*_, dmarc] = expected_records("example.test", "s1", "KEY", ["192.0.2.1"], rua="rabc@reports.test")
    assert dmarc.value == "v=DMARC1; p=none; rua=mailto:rabc@reports.test"


def test_a_bad_reports_domain_fails_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="REMAILS_REPORTS_DOMAIN"):
        load_settings(reports_domain="reports@example.test")
    assert (
        load_settings(reports_domain="Reports.Example.TEST.").effective_reports_domain
        == "reports.example.test"
    )
    assert load_settings(hostname="mx.example.test").effective_reports_domain == "mx.example.test"
