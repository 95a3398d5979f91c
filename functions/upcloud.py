"""The few UpCloud API calls the ip_manager makes (API 1.3, JSON, HTTP Basic or a bearer token).

- `GET /ip_address`: every IP address of the account, floating ones with `"floating": "yes"`,
  the server they are attached to (`server`) and their reverse DNS (`ptr_record`).
- `GET /server/{uuid}`: a server's network interfaces; a floating IP attaches to the MAC of a
  public one.
- `PUT /ip_address/{address}` with `{"ip_address": {"mac": ...}}` moves a floating IP to the
  interface with that MAC; with `{"ip_address": {"ptr_record": ...}}` it sets the reverse DNS.

Credentials come from a mounted Secret: files `token`, or `username` and `password` (an API
sub-account limited to IP addresses and servers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["FloatingIp", "UpCloud", "UpCloudError"]

DEFAULT_API = "https://api.upcloud.com/1.3"


class UpCloudError(Exception):
    """The API refused a call; carries its status and UpCloud's error code."""

    def __init__(self, call: str, status: int, code: str) -> None:
        super().__init__(f"UpCloud {call}: HTTP {status} {code}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class FloatingIp:
    address: str
    server: str | None  # the UUID of the server it is attached to
    ptr_record: str
    zone: str


class UpCloud:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @classmethod
    def from_credentials(cls, directory: Path, base_url: str = DEFAULT_API, timeout: float = 15.0) -> UpCloud:
        token = directory / "token"
        auth: httpx.Auth | None = None
        headers: dict[str, str] = {"Accept": "application/json"}
        if token.exists():
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        else:
            username = (directory / "username").read_text().strip()
            password = (directory / "password").read_text().strip()
            auth = httpx.BasicAuth(username, password)
        return cls(httpx.AsyncClient(base_url=base_url, auth=auth, headers=headers, timeout=timeout))

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.client.request(method, path.lstrip("/"), json=body)
        if response.status_code >= 400:
            code = ""
            with contextlib.suppress(ValueError):  # not every error has a JSON body
                code = str(response.json().get("error", {}).get("error_code", ""))
            raise UpCloudError(f"{method} {path}", response.status_code, code)
        data: dict[str, Any] = response.json() if response.content else {}
        return data

    async def floating_ips(self) -> list[FloatingIp]:
        data = await self._call("GET", "/ip_address")
        return [
            FloatingIp(
                address=ip["address"],
                server=ip.get("server") or None,
                ptr_record=ip.get("ptr_record", ""),
                zone=ip.get("zone", ""),
            )
            for ip in data.get("ip_addresses", {}).get("ip_address", [])
            if ip.get("floating") == "yes" and ip.get("family", "IPv4") == "IPv4"
        ]

    async def public_mac(self, server: str) -> str | None:
        """The MAC of the server's first public interface (where floating IPs attach)."""
        data = await self._call("GET", f"/server/{server}")
        interfaces = data.get("server", {}).get("networking", {}).get("interfaces", {}).get("interface", [])
        for interface in sorted(interfaces, key=lambda i: int(i.get("index", 0))):
            if interface.get("type") == "public" and interface.get("mac"):
                return str(interface["mac"])
        return None

    async def attach(self, address: str, mac: str) -> None:
        await self._call("PUT", f"/ip_address/{address}", {"ip_address": {"mac": mac}})

    async def set_ptr(self, address: str, ptr_record: str) -> None:
        await self._call("PUT", f"/ip_address/{address}", {"ip_address": {"ptr_record": ptr_record}})

    async def aclose(self) -> None:
        await self.client.aclose()
