"""The node-side loop that keeps the floating IPs UpCloud attached to this node on its interface
(infra/node/floating_ip_alias.py): its decisions, from the metadata service's JSON and
`ip -j addr show` output (shapes as UpCloud's and iproute2's)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "floating_ip_alias", ROOT / "infra" / "node" / "floating_ip_alias.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["floating_ip_alias"] = module
    spec.loader.exec_module(module)
    return module


alias = _module()
OURS = {"203.0.113.1", "203.0.113.2", "203.0.113.3"}

METADATA: dict[str, Any] = {
    "cloud_name": "upcloud",
    "network": {
        "interfaces": [
            {
                "index": 1,
                "mac": "32:D5:BA:4A:36:E7",
                "type": "public",
                "ip_addresses": [
                    {"address": "94.237.105.53", "dhcp": True, "family": "IPv4", "floating": False},
                    {"address": "203.0.113.1", "dhcp": False, "family": "IPv4", "floating": True},
                    {"address": "198.51.100.7", "dhcp": False, "family": "IPv4", "floating": True},
                ],
            },
            {
                "index": 2,
                "mac": "32:d5:ba:4a:84:cc",
                "type": "utility",
                "ip_addresses": [{"address": "10.6.3.27", "dhcp": True, "family": "IPv4", "floating": False}],
            },
        ]
    },
}


def _link(name: str, mac: str, *addresses: str) -> dict[str, Any]:
    info = [{"family": "inet", "local": a, "prefixlen": 32} for a in addresses]
    return {"ifname": name, "address": mac, "addr_info": [*info, {"family": "inet6", "local": "fe80::1"}]}


def test_our_floating_ips_attached_here_are_added_to_the_interface_with_their_mac() -> None:
    wanted = alias.attached(METADATA, OURS)
    assert wanted == {"203.0.113.1": "32:d5:ba:4a:36:e7"}  # not 198.51.100.7: not ours
    links = [
        _link("lo", "00:00:00:00:00:00", "127.0.0.1"),
        _link("eth0", "32:d5:ba:4a:36:e7", "94.237.105.53"),
    ]
    assert alias.changes(wanted, links, OURS) == [alias.Change("add", "203.0.113.1", "eth0")]


def test_an_ip_that_moved_away_is_removed_and_one_in_place_is_left_alone() -> None:
    wanted = alias.attached(METADATA, OURS)
    links = [
        _link("eth0", "32:d5:ba:4a:36:e7", "94.237.105.53", "203.0.113.1", "203.0.113.2"),
        _link("eth1", "32:d5:ba:4a:84:cc", "10.6.3.27", "192.0.2.50"),
    ]
    assert alias.changes(wanted, links, OURS) == [alias.Change("del", "203.0.113.2", "eth0")]
    # Nothing of ours attached any more: every one of ours goes, nothing else does.
    assert alias.changes({}, links, OURS) == [
        alias.Change("del", "203.0.113.1", "eth0"),
        alias.Change("del", "203.0.113.2", "eth0"),
    ]
