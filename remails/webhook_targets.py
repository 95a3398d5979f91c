"""Where a webhook may be posted: the URL and the addresses its host resolves to, checked
against the SSRF policy (`webhook_policy.forbidden_address`) when an endpoint is registered
and before every POST; and the pinning that makes the POST go to the address that was checked.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import dns.exception

from remails.config import Settings
from remails.dns import make_resolver
from remails.errors import UnsafeTarget
from remails.webhook_policy import forbidden_address

__all__ = ["check_target", "pinned"]

# Said with every refusal the setting would lift: the server and the CLI each read it.
_ALLOW_HINT = "; REMAILS_WEBHOOKS_ALLOW_PRIVATE=true allows it, for development (server and CLI alike)"


async def check_target(settings: Settings, url: str) -> str | None:
    """Refuse anything but http(s) with a host; then, unless the setting allows private
    targets (development and tests), refuse http and names or literals that point at a
    forbidden address. Names are resolved first: a public name pointing at an internal address
    is refused too. Returns the checked address to connect to (None when private targets are
    allowed and nothing was checked)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("must be an http(s) URL with a host")
    if settings.webhooks_allow_private:
        return None
    if parts.scheme != "https":
        raise UnsafeTarget("must use https" + _ALLOW_HINT)
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = []
    if host.rstrip(".").lower().split(".")[-1] == "localhost":  # RFC 6761: loopback, never looked up
        raise UnsafeTarget(f"{host} is this machine (loopback){_ALLOW_HINT}")
    if not addresses:
        resolver = make_resolver(settings)
        for rtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(host, rtype)
            except dns.exception.DNSException:
                continue
            addresses += [r.address for r in answer]
        if not addresses:
            raise UnsafeTarget(f"{host} does not resolve") from None
    if any(forbidden_address(a) for a in addresses):
        raise UnsafeTarget(f"{host} points at a private or internal address{_ALLOW_HINT}")
    return addresses[0]


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL, extra headers, httpx extensions) to POST `url` to the checked `address` while TLS
    still verifies the certificate against the host name (SNI). Connecting to the address that
    was checked, rather than resolving again, closes the DNS-rebinding window."""
    parts = urlsplit(url)
    if address is None or parts.hostname is None:
        return url, {}, {}
    host = parts.hostname
    literal = f"[{address}]" if ":" in address else address
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl(), {"host": host_header}, {"sni_hostname": host}
