"""floating_ip_alias: keep the outbound floating IPs UpCloud has attached to this node on the
node's network interface, and only those.

UpCloud attaches a floating IP to a server's interface but leaves it to the operating system to
configure (its API documentation says so); the ip_manager function moves the IPs between nodes.
This loop runs beside the sender in its pod (the node's network namespace, NET_ADMIN only): it
reads which floating IPs the metadata service lists for this server, adds those of
REMAILS_OUTBOUND_IPS that the interface lacks (`ip addr add IP/32 dev IF`) and removes the ones
that moved away. Standard library only; one JSON line per change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

METADATA = "http://169.254.169.254/metadata/v1.json"
PERIOD_SECONDS = 10.0  # the ip_manager moves IPs once a minute


@dataclass(frozen=True)
class Change:
    action: str  # "add" | "del"
    address: str
    interface: str


def attached(metadata: dict[str, Any], ours: set[str]) -> dict[str, str]:
    """Our floating IPs attached to this server: address → MAC of the interface holding it."""
    found = {}
    for interface in metadata.get("network", {}).get("interfaces", []):
        for ip in interface.get("ip_addresses", []):
            if ip.get("floating") is True and ip.get("address") in ours:
                found[ip["address"]] = str(interface.get("mac", "")).lower()
    return found


def configured(ip_addr: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """From `ip -j addr show`: MAC → interface name, and interface name → its IPv4 addresses."""
    names = {str(link.get("address", "")).lower(): link["ifname"] for link in ip_addr}
    addresses = {
        link["ifname"]: {a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"}
        for link in ip_addr
    }
    return names, addresses


def changes(wanted: dict[str, str], ip_addr: list[dict[str, Any]], ours: set[str]) -> list[Change]:
    """What to add and remove so the interfaces carry exactly the wanted IPs of ours (pure)."""
    names, addresses = configured(ip_addr)
    out = []
    for address, mac in sorted(wanted.items()):
        interface = names.get(mac)
        if interface is not None and address not in addresses.get(interface, set()):
            out.append(Change("add", address, interface))
    for interface, present in sorted(addresses.items()):
        for address in sorted(present & ours):
            if names.get(wanted.get(address, "")) != interface:
                out.append(Change("del", address, interface))
    return out


def _run(args: list[str]) -> str:
    # Only `ip` with addresses read from the metadata service and REMAILS_OUTBOUND_IPS.
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=10).stdout  # noqa: S603


def once(ours: set[str]) -> list[Change]:
    with urllib.request.urlopen(METADATA, timeout=5) as response:
        metadata = json.load(response)
    todo = changes(attached(metadata, ours), json.loads(_run(["ip", "-j", "addr", "show"])), ours)
    for change in todo:
        _run(["ip", "addr", change.action, f"{change.address}/32", "dev", change.interface])
        print(json.dumps({"event": "floating ip", **vars(change)}), flush=True)
    return todo


def main() -> int:
    ours = {ip.strip() for ip in os.environ.get("REMAILS_OUTBOUND_IPS", "").split(",") if ip.strip()}
    while True:
        try:
            once(ours)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            print(json.dumps({"event": "floating ip check failed", "error": type(exc).__name__}), flush=True)
        time.sleep(PERIOD_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
