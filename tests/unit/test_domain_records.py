from remails.domain_records import (
    DnsRecord,
    RecordCheck,
    check_records,
    expected_records,
    is_same_or_subdomain,
    parse_tags,
)


def _records() -> list[DnsRecord]:
    # Built inside each test, not at import: a module-level value would be computed once,
    # before mutation testing switches a mutant on, and hide it.
    return expected_records("example.test", "rm1", "MIIBkey", ["127.0.0.2", "::1"])


def test_expected_records_name_dkim_spf_dmarc() -> None:
    by_kind = {r.kind: r for r in _records()}
    assert by_kind["dkim"].name == "rm1._domainkey.example.test"
    assert by_kind["dkim"].value == "v=DKIM1; k=rsa; p=MIIBkey"
    assert by_kind["spf"].name == "example.test"
    assert by_kind["spf"].value == "v=spf1 ip4:127.0.0.2 ip6:::1 ~all"
    assert by_kind["dmarc"].name == "_dmarc.example.test"


def test_all_published_verifies() -> None:
    ok, checks = check_records(
        _records(),
        {
            "dkim": ["v=DKIM1; k=rsa; p=MIIB key"],  # split strings may add spaces
            "spf": ["v=spf1 include:other.test ip4:127.0.0.2 ip6:::1 -all", "google-site=x"],
            "dmarc": ["v=DMARC1; p=reject"],
        },
    )
    assert ok
    assert all(c.ok for c in checks.values())


def test_wrong_dkim_key_or_missing_spf_ip_fails() -> None:
    ok, checks = check_records(
        _records(), {"dkim": ["v=DKIM1; p=OTHER"], "spf": ["v=spf1 ip4:127.0.0.2 ~all"]}
    )
    assert not ok
    assert not checks["dkim"].ok and not checks["spf"].ok and not checks["dmarc"].ok
    assert checks["dkim"].found == ["v=DKIM1; p=OTHER"]


def test_two_spf_records_are_an_error() -> None:
    spf = "v=spf1 ip4:127.0.0.2 ip6:::1 ~all"
    ok, checks = check_records(_records(), {"dkim": ["p=MIIBkey"], "spf": [spf, spf]})
    assert not ok and not checks["spf"].ok


def test_dmarc_is_advised_not_required() -> None:
    ok, _ = check_records(_records(), {"dkim": ["p=MIIBkey"], "spf": ["v=spf1 ip4:127.0.0.2 ip6:::1 ~all"]})
    assert ok


def test_subdomain_on_a_dot_boundary_only() -> None:
    assert is_same_or_subdomain("example.test", "example.test")
    assert is_same_or_subdomain("Mail.Example.Test.", "example.test")
    assert not is_same_or_subdomain("evilexample.test", "example.test")
    assert not is_same_or_subdomain("example.test.evil", "example.test")


def test_parse_tags() -> None:
    assert parse_tags("v=DKIM1; k=rsa; p=AB CD") == {"v": "DKIM1", "k": "rsa", "p": "ABCD"}


def test_the_customer_is_shown_three_txt_records_to_publish_in_order() -> None:
    records = expected_records("Example.test", "s2", "KEY", ["192.0.2.1"])
    assert [r.kind for r in records] == ["dkim", "spf", "dmarc"]
    assert [r.as_dict() for r in records] == [
        {"type": "TXT", "name": "s2._domainkey.Example.test", "value": "v=DKIM1; k=rsa; p=KEY"},
        {"type": "TXT", "name": "Example.test", "value": "v=spf1 ip4:192.0.2.1 ~all"},
        {"type": "TXT", "name": "_dmarc.Example.test", "value": "v=DMARC1; p=none"},
    ]


def test_spf_lists_every_outbound_ip_with_its_family() -> None:
    spf = expected_records("example.test", "s", "K", ["2001:db8::5", "198.51.100.7"])[1]
    assert spf.value == "v=spf1 ip6:2001:db8::5 ip4:198.51.100.7 ~all"
    assert expected_records("example.test", "s", "K", [])[1].value == "v=spf1 ~all"


def test_spf_missing_the_first_outbound_ip_fails() -> None:
    ok, checks = check_records(_records(), {"dkim": ["p=MIIBkey"], "spf": ["v=spf1 ip6:::1 ~all"]})
    assert not ok and not checks["spf"].ok


def test_a_txt_without_a_version_tag_is_not_dmarc() -> None:
    _, checks = check_records(_records(), {"dkim": ["p=MIIBkey"], "dmarc": ["p=reject", "v=spf1 -all"]})
    assert not checks["dmarc"].ok
    _, checks = check_records(_records(), {"dmarc": ["v=dmarc1; p=none"]})
    assert checks["dmarc"].ok


def test_each_check_reports_what_was_found_and_what_is_expected() -> None:
    _, checks = check_records(_records(), {"spf": ["v=spf1 -all"]})
    assert checks["spf"] == RecordCheck(False, ["v=spf1 -all"], "v=spf1 ip4:127.0.0.2 ip6:::1 ~all")
    assert checks["dkim"].as_dict() == {
        "ok": False,
        "found": [],
        "expected": "v=DKIM1; k=rsa; p=MIIBkey",
    }
    assert checks["dmarc"].expected == "v=DMARC1; p=none"


def test_dkim_key_with_base64_padding_is_read_whole() -> None:
    assert parse_tags("v=DKIM1; p=MIIB+/ab==")["p"] == "MIIB+/ab=="
    ok, _ = check_records(
        expected_records("example.test", "s", "AB==", []),
        {"dkim": ["v=DKIM1; k=rsa; p=AB=="], "spf": ["v=spf1 ~all"]},
    )
    assert ok


def test_trailing_root_dot_on_the_verified_domain_is_ignored() -> None:
    assert is_same_or_subdomain("mail.example.test", "Example.Test.")
    assert is_same_or_subdomain("example.test", "example.test.")
