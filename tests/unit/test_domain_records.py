from remails.domain_records import check_records, expected_records, is_same_or_subdomain, parse_tags

RECORDS = expected_records("example.test", "rm1", "MIIBkey", ["127.0.0.2", "::1"])


def test_expected_records_name_dkim_spf_dmarc() -> None:
    by_kind = {r.kind: r for r in RECORDS}
    assert by_kind["dkim"].name == "rm1._domainkey.example.test"
    assert by_kind["dkim"].value == "v=DKIM1; k=rsa; p=MIIBkey"
    assert by_kind["spf"].name == "example.test"
    assert by_kind["spf"].value == "v=spf1 ip4:127.0.0.2 ip6:::1 ~all"
    assert by_kind["dmarc"].name == "_dmarc.example.test"


def test_all_published_verifies() -> None:
    ok, checks = check_records(
        RECORDS,
        {
            "dkim": ["v=DKIM1; k=rsa; p=MIIB key"],  # split strings may add spaces
            "spf": ["v=spf1 include:other.test ip4:127.0.0.2 ip6:::1 -all", "google-site=x"],
            "dmarc": ["v=DMARC1; p=reject"],
        },
    )
    assert ok
    assert all(c.ok for c in checks.values())


def test_wrong_dkim_key_or_missing_spf_ip_fails() -> None:
    ok, checks = check_records(RECORDS, {"dkim": ["v=DKIM1; p=OTHER"], "spf": ["v=spf1 ip4:127.0.0.2 ~all"]})
    assert not ok
    assert not checks["dkim"].ok and not checks["spf"].ok and not checks["dmarc"].ok
    assert checks["dkim"].found == ["v=DKIM1; p=OTHER"]


def test_two_spf_records_are_an_error() -> None:
    spf = "v=spf1 ip4:127.0.0.2 ip6:::1 ~all"
    ok, checks = check_records(RECORDS, {"dkim": ["p=MIIBkey"], "spf": [spf, spf]})
    assert not ok and not checks["spf"].ok


def test_dmarc_is_advised_not_required() -> None:
    ok, _ = check_records(RECORDS, {"dkim": ["p=MIIBkey"], "spf": ["v=spf1 ip4:127.0.0.2 ip6:::1 ~all"]})
    assert ok


def test_subdomain_on_a_dot_boundary_only() -> None:
    assert is_same_or_subdomain("example.test", "example.test")
    assert is_same_or_subdomain("Mail.Example.Test.", "example.test")
    assert not is_same_or_subdomain("evilexample.test", "example.test")
    assert not is_same_or_subdomain("example.test.evil", "example.test")


def test_parse_tags() -> None:
    assert parse_tags("v=DKIM1; k=rsa; p=AB CD") == {"v": "DKIM1", "k": "rsa", "p": "ABCD"}
