"""Webhook targets in the address classes that `is_private` does not cover are refused too:
multicast (IPv4 and IPv6) and the IETF-reserved IPv6 blocks, also when embedded in IPv6."""

import pytest

from remails.webhook_policy import forbidden_address


@pytest.mark.parametrize("ip", ["224.0.0.1", "239.255.255.250", "ff02::1", "ff05::2", "::ffff:224.0.0.1"])
def test_multicast_addresses_are_refused_as_webhook_targets(ip: str) -> None:
    assert forbidden_address(ip)


@pytest.mark.parametrize("ip", ["4000::1", "e000::1", "fe00::1"])
def test_reserved_ipv6_addresses_are_refused_as_webhook_targets(ip: str) -> None:
    assert forbidden_address(ip)


def test_a_public_address_next_to_them_is_allowed() -> None:
    assert not forbidden_address("2606:4700::1111")
    assert not forbidden_address("223.255.255.1")
