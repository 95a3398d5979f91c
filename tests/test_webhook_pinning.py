"""A webhook POST goes to the address that was checked, while TLS verifies the host name."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest
import trustme

from remails.webhook_targets import pinned


def test_pinned_rewrites_the_address_and_keeps_the_name() -> None:
    assert pinned("https://hooks.example.test/a?b=1", "203.0.113.5") == (
        "https://203.0.113.5/a?b=1",
        {"host": "hooks.example.test"},
        {"sni_hostname": "hooks.example.test"},
    )
    assert pinned("https://hooks.example.test:8443/a", "2001:db8::5") == (
        "https://[2001:db8::5]:8443/a",
        {"host": "hooks.example.test:8443"},
        {"sni_hostname": "hooks.example.test"},
    )
    assert pinned("http://127.0.0.1:9/hook", None) == ("http://127.0.0.1:9/hook", {}, {})


async def test_a_pinned_post_reaches_the_address_and_verifies_the_certificate(ca: trustme.CA) -> None:
    seen: dict[str, str] = {}
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example.test").configure_cert(server_context)

    def sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        seen["sni"] = name or ""

    server_context.sni_callback = sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("host:"):
                seen["host"] = line.split(":", 1)[1].strip()
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    try:
        async with httpx.AsyncClient(verify=client_context, timeout=5) as client:
            url, headers, extensions = pinned(f"https://hooks.example.test:{port}/hook", "127.0.0.1")
            response = await client.post(url, content=b"{}", headers=headers, extensions=extensions)
            assert response.status_code == 204
            assert seen == {"sni": "hooks.example.test", "host": f"hooks.example.test:{port}"}
            # A certificate for another name is refused even at the right address.
            url, headers, _ = pinned(f"https://other.example.test:{port}/hook", "127.0.0.1")
            with pytest.raises(httpx.ConnectError):
                await client.post(
                    url, content=b"{}", headers=headers, extensions={"sni_hostname": "other.example.test"}
                )
    finally:
        server.close()
        await server.wait_closed()
