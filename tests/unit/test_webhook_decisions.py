"""Webhook decisions without I/O: signatures, the retry schedule, and which targets are refused."""

from __future__ import annotations

import ipaddress
import time
from datetime import timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from remails.config import ConfigError, load_settings
from remails.webhook_policy import (
    DEFAULT_SCHEDULE,
    embedded_ipv4,
    forbidden_address,
    next_delay,
    parse_schedule,
    should_retry,
)
from remails.webhook_signing import generate_webhook_secret, sign, signature_header


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    secret = generate_webhook_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"message.delivered"}'
    now = int(time.time())  # the library refuses timestamps far from now
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_1", now, body),
    }
    assert Webhook(secret).verify(body, headers) == {"type": "message.delivered"}
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_webhook_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = generate_webhook_secret(), generate_webhook_secret()
    header = signature_header([new, old], "id", 5, b"{}")
    assert header.split(" ") == [sign(new, "id", 5, b"{}"), sign(old, "id", 5, b"{}")]


def test_the_default_schedule_and_its_end() -> None:
    schedule = parse_schedule(DEFAULT_SCHEDULE)
    assert schedule == [0, 5, 300, 1800, 7200, 18000, 36000]
    assert next_delay(schedule, 0) == timedelta(0)
    assert next_delay(schedule, 2) == timedelta(minutes=5)
    assert next_delay(schedule, 7) is None
    assert parse_schedule("0s, 250ms ,1d") == [0, 0.25, 86400]
    with pytest.raises(ValueError, match=r"'5 minutes' is not a duration"):
        parse_schedule("5 minutes")


def test_schedule_setting_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^REMAILS_WEBHOOK_RETRY_SCHEDULE: "):
        load_settings(webhook_retry_schedule="0s,soon")


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (503, True),
        (429, True),
        (None, True),
        (400, False),
        (404, False),
        (410, False),
        (301, False),
    ],
)
def test_what_is_retried(status: int | None, retry: bool) -> None:
    assert should_retry(status) is retry


@pytest.mark.parametrize(
    ("ip", "forbidden"),
    [
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("172.16.5.4", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("169.254.169.254", True),
        ("fe80::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("100.64.0.1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        # IPv4-mapped, -compatible and -translated: judged by the IPv4 address they carry
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("::127.0.0.1", True),
        ("::8.8.8.8", False),
        ("::ffff:0:127.0.0.1", True),
        ("::ffff:0:8.8.8.8", False),
        # 6to4 (2002::/16): the IPv4 address in bits 16-47
        ("2002:7f00:1::1", True),
        ("2002:a9fe:a9fe::1", True),  # 169.254.169.254, the metadata service
        ("2002:c0a8:1::1", True),  # 192.168.0.1
        ("2002:808:808::1", False),
        # Teredo (2001::/32): the server, and the client stored inverted
        ("2001:0:7f00:1::1", True),  # server 127.0.0.1
        ("2001:0:808:808:0:0:f5ff:fffe", True),  # client ~f5ff:fffe = 10.0.0.1
        ("2001:0:808:808:0:0:f7f7:f7f7", False),  # server and client 8.8.8.8
        # NAT64: the well-known prefix, and local-use (every RFC 6052 position counts)
        ("64:ff9b::7f00:1", True),
        ("64:ff9b::a9fe:a9fe", True),
        ("64:ff9b::808:808", False),
        ("64:ff9b:1::7f00:1", True),
        ("64:ff9b:1:7f00:0:100::", True),  # 127.0.0.1 in the /48 position
        ("64:ff9b:1:808:8:8:808:808", False),  # a public address in every position
    ],
)
def test_forbidden_addresses(ip: str, forbidden: bool) -> None:
    assert forbidden_address(ip) is forbidden


@pytest.mark.parametrize(
    ("ip", "embedded"),
    [
        ("2002:7f00:1::1", ["127.0.0.1"]),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ["65.54.227.120", "192.0.2.45"]),
        ("64:ff9b::c000:221", ["192.0.2.33"]),
        ("64:ff9b:1:c000:2:2100::", ["192.0.2.33", "0.2.33.0", "2.33.0.0", "0.0.0.0"]),
        ("::ffff:192.0.2.33", ["192.0.2.33"]),
        ("2001:4860:4860::8888", []),
    ],
)
def test_embedded_ipv4(ip: str, embedded: list[str]) -> None:
    address = ipaddress.IPv6Address(ip)
    assert [str(a) for a in embedded_ipv4(address)] == embedded
    if address.teredo is not None:  # the standard library agrees on Teredo and 6to4
        assert [str(a) for a in address.teredo] == embedded
    if address.sixtofour is not None:
        assert [str(address.sixtofour)] == embedded
