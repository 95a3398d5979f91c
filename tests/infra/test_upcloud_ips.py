"""ip_manager puts the outbound floating IPs on live nodes and keeps their reverse DNS, through
UpCloud's API, here a local HTTP server on loopback that speaks the calls it makes with the
request and response shapes of UpCloud's API 1.3 documentation."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from remails_functions.ip_manager import Move, live_servers, place_ips, ptr_fixes, reconcile_ips
from remails_functions.upcloud import FloatingIp, UpCloud

HOSTNAME = "mail.example.com"
A, B, C = (f"00{n}a0000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))


def fip(address: str, server: str | None, ptr: str = HOSTNAME) -> FloatingIp:
    return FloatingIp(address=address, server=server, ptr_record=ptr, zone="de-fra1")


# ---------------------------------------------------------------- the decisions (pure)


def test_an_ip_on_a_live_node_stays_where_it_is() -> None:
    assert (
        place_ips([fip("203.0.113.1", B), fip("203.0.113.2", C)], {"203.0.113.1", "203.0.113.2"}, [B, C])
        == []
    )


def test_ips_on_a_dead_node_or_detached_go_to_the_least_loaded_live_node() -> None:
    ips = [fip("203.0.113.1", A), fip("203.0.113.2", B), fip("203.0.113.3", None)]
    wanted = {"203.0.113.1", "203.0.113.2", "203.0.113.3"}
    assert place_ips(ips, wanted, [B, C]) == [Move("203.0.113.1", C), Move("203.0.113.3", B)]


def test_nothing_moves_without_a_live_node_and_ips_not_ours_are_left_alone() -> None:
    assert place_ips([fip("203.0.113.1", A)], {"203.0.113.1"}, []) == []
    assert place_ips([fip("198.51.100.9", A)], {"203.0.113.1"}, [B]) == []


def test_reverse_dns_is_fixed_where_it_is_not_our_hostname() -> None:
    ips = [
        fip("203.0.113.1", B, "203-0-113-1.de-fra1.upcloud.host"),
        fip("203.0.113.2", B, "MAIL.example.com."),
    ]
    assert ptr_fixes(ips, {"203.0.113.1", "203.0.113.2"}, HOSTNAME) == ["203.0.113.1"]


def test_live_servers_are_the_ready_upcloud_nodes() -> None:
    def node(uuid: str, ready: str) -> dict[str, Any]:
        return {
            "spec": {"providerID": f"upcloud:////{uuid}"},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": ready},
                ]
            },
        }

    nodes = {"items": [node(C, "True"), node(A, "Unknown"), node(B, "True"), {"spec": {}, "status": {}}]}
    assert live_servers(nodes) == [B, C]


# ---------------------------------------------------------------- against an UpCloud API on loopback


@dataclass
class FakeUpCloud:
    """The account: servers with one public interface each, and floating IPs."""

    macs: dict[str, str]  # server uuid → MAC of its public interface
    ips: dict[str, dict[str, Any]]
    auth: str
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    refuse_ptr: bool = False


def _handler(state: FakeUpCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str) -> None:
            self._reply(status, {"error": {"error_code": code, "error_message": code}})

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != state.auth:
                self._error(401, "AUTHENTICATION_FAILED")
                return False
            return True

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, None))
            if not self._authorized():
                return
            if self.path == "/1.3/ip_address":
                self._reply(200, {"ip_addresses": {"ip_address": list(state.ips.values())}})
            elif self.path.startswith("/1.3/server/") and self.path[12:] in state.macs:
                uuid = self.path[12:]
                interfaces = [
                    {"index": 1, "type": "public", "mac": state.macs[uuid]},
                    {"index": 2, "type": "utility", "mac": "de:ad:00:00:00:99"},
                ]
                self._reply(
                    200, {"server": {"uuid": uuid, "networking": {"interfaces": {"interface": interfaces}}}}
                )
            else:
                self._error(404, "NOT_FOUND")

        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(("PUT", self.path, body))
            if not self._authorized():
                return
            address = self.path.removeprefix("/1.3/ip_address/")
            ip = state.ips.get(address)
            if ip is None or set(body) != {"ip_address"}:
                self._error(404 if ip is None else 400, "IP_ADDRESS_NOT_FOUND")
                return
            change = body["ip_address"]
            if "ptr_record" in change and state.refuse_ptr:
                self._error(400, "PTR_RECORD_INVALID")
                return
            if "mac" in change:
                owner = next((s for s, mac in state.macs.items() if mac == change["mac"]), None)
                if owner is None:
                    self._error(400, "MAC_ADDRESS_INVALID")
                    return
                ip.update(mac=change["mac"], server=owner)
            if "ptr_record" in change:
                ip["ptr_record"] = change["ptr_record"]
            self._reply(202, {"ip_address": ip})

    return Handler


def _ip(address: str, server: str | None, macs: dict[str, str], ptr: str) -> dict[str, Any]:
    return {
        "access": "public",
        "address": address,
        "family": "IPv4",
        "floating": "yes",
        "mac": macs.get(server or "", ""),
        "part_of_plan": "no",
        "ptr_record": ptr,
        "server": server or "",
        "zone": "de-fra1",
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeUpCloud, str]]:
    macs = {A: "de:ad:00:00:00:0a", B: "de:ad:00:00:00:0b", C: "de:ad:00:00:00:0c"}
    ips = {
        "203.0.113.1": _ip("203.0.113.1", A, macs, HOSTNAME),
        "203.0.113.2": _ip("203.0.113.2", B, macs, "203-0-113-2.de-fra1.upcloud.host"),
        "203.0.113.3": _ip("203.0.113.3", None, macs, HOSTNAME),
        # The node's own address, not floating: never touched.
        "198.51.100.5": {**_ip("198.51.100.5", B, macs, "x.upcloud.host"), "floating": "no"},
    }
    state = FakeUpCloud(macs=macs, ips=ips, auth="Basic " + base64.b64encode(b"remails-ip:s3cret").decode())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/1.3"
    finally:
        server.shutdown()
        server.server_close()


def _credentials(tmp_path: Path, **files: str) -> Path:
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    return tmp_path


WANTED = {"203.0.113.1", "203.0.113.2", "203.0.113.3"}


async def test_ips_move_from_the_dead_node_to_live_ones_with_reverse_dns_kept(
    api: tuple[FakeUpCloud, str], tmp_path: Path
) -> None:
    state, url = api
    upcloud = UpCloud.from_credentials(_credentials(tmp_path, username="remails-ip", password="s3cret"), url)
    try:
        moves = await reconcile_ips(upcloud, [B, C], WANTED, HOSTNAME)
    finally:
        await upcloud.aclose()
    assert moves == [Move("203.0.113.1", C), Move("203.0.113.3", B)]
    assert {a: ip["server"] for a, ip in state.ips.items()} == {
        "203.0.113.1": C,
        "203.0.113.2": B,
        "203.0.113.3": B,
        "198.51.100.5": B,
    }
    assert {a: state.ips[a]["ptr_record"] for a in WANTED} == dict.fromkeys(WANTED, HOSTNAME)
    puts = [(path, body) for method, path, body in state.requests if method == "PUT"]
    assert puts == [
        ("/1.3/ip_address/203.0.113.1", {"ip_address": {"mac": "de:ad:00:00:00:0c"}}),
        ("/1.3/ip_address/203.0.113.3", {"ip_address": {"mac": "de:ad:00:00:00:0b"}}),
        ("/1.3/ip_address/203.0.113.2", {"ip_address": {"ptr_record": HOSTNAME}}),
    ]


async def test_a_second_tick_changes_nothing(api: tuple[FakeUpCloud, str], tmp_path: Path) -> None:
    state, url = api
    upcloud = UpCloud.from_credentials(_credentials(tmp_path, username="remails-ip", password="s3cret"), url)
    try:
        await reconcile_ips(upcloud, [B, C], WANTED, HOSTNAME)
        state.requests.clear()
        assert await reconcile_ips(upcloud, [B, C], WANTED, HOSTNAME) == []
    finally:
        await upcloud.aclose()
    assert [m for m, _, _ in state.requests] == ["GET"]


async def test_a_token_is_sent_as_bearer_and_a_refused_ptr_does_not_stop_the_moves(
    api: tuple[FakeUpCloud, str], tmp_path: Path
) -> None:
    state, url = api
    state.auth = "Bearer ucat_test"
    state.refuse_ptr = True
    upcloud = UpCloud.from_credentials(_credentials(tmp_path, token="ucat_test"), url)
    try:
        moves = await reconcile_ips(upcloud, [C], WANTED, HOSTNAME)
    finally:
        await upcloud.aclose()
    # B is not live either now: everything goes to C.
    assert moves == [Move("203.0.113.1", C), Move("203.0.113.2", C), Move("203.0.113.3", C)]
    assert state.ips["203.0.113.2"]["ptr_record"] == "203-0-113-2.de-fra1.upcloud.host"
