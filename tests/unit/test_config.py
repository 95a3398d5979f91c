from pathlib import Path

import pytest

from remails.config import ConfigError, load_settings, parse_host_port


def test_defaults_are_loopback_and_documented_values() -> None:
    s = load_settings(dns_servers="")
    assert s.data_dir == Path(".remails")
    assert s.hostname == "localhost"
    assert s.smtp_submission_listen == ("127.0.0.1", 2587)
    assert s.smtp_tls_listen == ("127.0.0.1", 2465)
    assert s.http_listen == ("127.0.0.1", 8080)
    assert s.outbound_ips == ["127.0.0.1"]
    assert s.delivery_port == 25
    assert s.bus == "inprocess"
    assert s.tick_seconds == 10
    assert s.trusted_networks == {}


def test_lists_and_addresses_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMAILS_OUTBOUND_IPS", "127.0.0.2, 127.0.0.3")
    monkeypatch.setenv("REMAILS_DNS_SERVERS", "127.0.0.1:5353,::1")
    monkeypatch.setenv("REMAILS_SMTP_TLS_LISTEN", "[::1]:4650")
    monkeypatch.setenv("REMAILS_TRUSTED_NETWORKS", "127.0.0.0/8=p1,10.1.2.3/16=p2")
    s = load_settings()
    assert s.outbound_ips == ["127.0.0.2", "127.0.0.3"]
    assert s.dns_servers == [("127.0.0.1", 5353), ("::1", 53)]
    assert s.smtp_tls_listen == ("::1", 4650)
    assert s.trusted_networks == {"127.0.0.0/8": "p1", "10.1.0.0/16": "p2"}


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("REMAILS_DELIVERY_PORT", "x", "valid integer"),
        ("REMAILS_DELIVERY_PORT", "70000", "less than or equal"),
        ("REMAILS_OUTBOUND_IPS", "1.2.3", "'1.2.3'"),
        ("REMAILS_HTTP_LISTEN", "localhost", "missing port"),
        ("REMAILS_BUS", "kafka", "'inprocess' or 'knative'"),
        ("REMAILS_TRUSTED_NETWORKS", "10.0.0.0/8", "CIDR=PROJECT_ID"),
        ("REMAILS_TICK_SECONDS", "0", "greater than 0"),
        ("REMAILS_DNS_SERVERS", "dns.example:53", "does not appear to be an IPv4"),
        ("REMAILS_NODE_NAME", "node#2", "cannot contain '#'"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert says in message
    assert "\n" not in message


def test_host_port_forms() -> None:
    assert parse_host_port("0.0.0.0:25") == ("0.0.0.0", 25)
    assert parse_host_port("[::]:587") == ("::", 587)
    assert parse_host_port("127.0.0.1", 53) == ("127.0.0.1", 53)
    with pytest.raises(ValueError, match="bad port"):
        parse_host_port("h:99999")


def test_every_setting_is_documented_in_the_readme() -> None:
    from remails.config import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`REMAILS_{name.upper()}`" not in readme]
    assert missing == []
