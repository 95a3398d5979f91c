"""MTA-STS (RFC 8461): a destination's published promise of TLS to named MX hosts.

Discovery is the `_mta-sts.<domain>` TXT record (its `id` says when the policy changed); the
policy is fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`, with the name resolved
through our resolver (`REMAILS_DNS_SERVERS`) and the connection made to that address while TLS
verifies the certificate against the name. Policies are cached by id until `max_age` runs out;
a failed discovery or fetch keeps using an unexpired cached policy (§5.1). A discovery that
failed (timeout, SERVFAIL) is not tried again for `FAILED_LOOKUP_SECONDS`.

Parsing and MX matching are pure functions; `MtaSts` holds the cache and does the I/O.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx

from remails.dns import DnsFailure, txt_lookup
from remails.log import log_event
from remails.webhook_targets import pinned

__all__ = [
    "MAX_POLICY_BYTES",
    "MtaSts",
    "Policy",
    "PolicyError",
    "allowed_hosts",
    "mx_matches",
    "parse_policy",
    "parse_sts_record",
]

logger = logging.getLogger("remails.sender.mta_sts")

Mode = Literal["enforce", "testing", "none"]
MAX_POLICY_BYTES = 64 * 1024  # §3.2: the policy is small; a larger body is refused
MAX_AGE_LIMIT = 31_557_600  # §3.2: at most one year
# A `_mta-sts` lookup that failed (timeout, SERVFAIL) is not asked again for this long: a
# destination with a broken resolver path would otherwise cost the timeout on every delivery.
FAILED_LOOKUP_SECONDS = 300.0
MAX_FAILED_KEPT = 10_000  # past this the failed-lookup memory starts over
# A domain without a `_mta-sts` record (most of them) is not asked again for this long: every
# message to it asked before, whatever the resolver's cache held.
ABSENT_RECORD_SECONDS = 60.0
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A policy or TXT record that does not follow RFC 8461: treated as no policy."""


@dataclass(frozen=True)
class Policy:
    id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int


def parse_sts_record(texts: list[str]) -> str | None:
    """The policy id of the `_mta-sts` TXT strings; None without exactly one STSv1 record (§3.1:
    several records, or none, mean no policy)."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if len(records) != 1:
        return None
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1" or not _ID.match(fields.get("id", "")):
        return None
    return fields["id"]


def parse_policy(text: str, policy_id: str) -> Policy:
    """The policy body (§3.2): `key: value` lines, `mx` may repeat; unknown keys are ignored."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line without ':' in policy: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError("policy version is not STSv1")
    mode: Mode
    match values.get("mode"):
        case "enforce" | "testing" | "none" as known:
            mode = known
        case other:
            raise PolicyError(f"policy mode {other!r} is not enforce, testing or none")
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(f"policy max_age {age!r} is not a number of seconds")
    if mode != "none" and not mx:
        raise PolicyError("policy names no mx")
    return Policy(policy_id, mode, tuple(mx), min(int(age), MAX_AGE_LIMIT))


def mx_matches(host: str, pattern: str) -> bool:
    """§4.1: a literal name, or `*.` standing for exactly one leftmost label."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def allowed_hosts(policy: Policy, hosts: list[str]) -> list[str]:
    """The MX hosts the policy names, in the order given."""
    return [h for h in hosts if any(mx_matches(h, p) for p in policy.mx)]


@dataclass
class _Cached:
    policy: Policy
    expires: float  # monotonic


class MtaSts:
    """The policy cache of one sender node, and the HTTPS client that fills it."""

    def __init__(
        self,
        resolver: dns.asyncresolver.Resolver,
        ca_file: Path | None = None,
        *,
        port: int = 443,
        timeout: float = 10.0,
        failed_lookup_seconds: float = FAILED_LOOKUP_SECONDS,
    ) -> None:
        self.resolver = resolver
        self.failed_lookup_seconds = failed_lookup_seconds
        self.port = port
        self.timeout = timeout
        # A context of its own: httpx sets ALPN on it, which SMTP must not offer.
        tls = ssl.create_default_context()
        if ca_file is not None:
            tls.load_verify_locations(cafile=ca_file)
        self._client = httpx.AsyncClient(verify=tls, timeout=timeout, follow_redirects=False, trust_env=False)
        self._cache: dict[str, _Cached] = {}
        self._failed: dict[str, float] = {}  # domain → monotonic time its lookup may be tried again
        self._absent: dict[str, float] = {}  # domain → monotonic time its missing record is asked again

    async def close(self) -> None:
        await self._client.aclose()

    async def policy(self, domain: str) -> Policy | None:
        """The domain's policy in force (mode `none` counts as no policy); never raises."""
        domain = domain.lower().rstrip(".")
        cached = self._cache.get(domain)
        now = time.monotonic()
        if cached is not None and cached.expires <= now:
            del self._cache[domain]
            cached = None
        for memory in (self._failed, self._absent):
            retry_at = memory.get(domain)
            if retry_at is not None:
                if retry_at > now:
                    return _in_force(cached)  # failed or absent a moment ago: the same again
                del memory[domain]
        try:
            texts, _ = await txt_lookup(self.resolver, f"_mta-sts.{domain}")
        except DnsFailure as exc:
            if len(self._failed) >= MAX_FAILED_KEPT:
                self._failed.clear()
            self._failed[domain] = time.monotonic() + self.failed_lookup_seconds
            log_event(logger, "mta-sts lookup failed", logging.WARNING, domain=domain, error=str(exc)[:200])
            return _in_force(cached)
        policy_id = parse_sts_record(texts)
        if policy_id is None:  # §5.1: an unexpired cached policy still holds without the record
            if not texts:
                if len(self._absent) >= MAX_FAILED_KEPT:
                    self._absent.clear()
                self._absent[domain] = now + ABSENT_RECORD_SECONDS
            return _in_force(cached)
        if cached is not None and cached.policy.id == policy_id:
            return _in_force(cached)
        try:
            fetched = await self._fetch(domain, policy_id)
        except (PolicyError, httpx.HTTPError, dns.exception.DNSException, OSError) as exc:
            log_event(
                logger, "mta-sts policy fetch failed", logging.WARNING, domain=domain, error=str(exc)[:200]
            )
            return _in_force(cached)
        self._cache[domain] = _Cached(fetched, now + fetched.max_age)
        log_event(logger, "mta-sts policy", domain=domain, policy_id=policy_id, mode=fetched.mode)
        return _in_force(self._cache[domain])

    async def _fetch(self, domain: str, policy_id: str) -> Policy:
        host = f"mta-sts.{domain}"
        try:
            answer = await self.resolver.resolve(host, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            answer = await self.resolver.resolve(host, "AAAA")  # an IPv6-only policy host
        address = next(iter(answer)).address
        url = f"https://{host}:{self.port}/.well-known/mta-sts.txt"
        target, headers, extensions = pinned(url, address)
        async with self._client.stream("GET", target, headers=headers, extensions=extensions) as response:
            if response.status_code != 200:  # §3.3: no redirects, only 200
                raise PolicyError(f"policy fetch answered {response.status_code}")
            if response.headers.get("content-type", "").split(";")[0].strip().lower() != "text/plain":
                raise PolicyError("policy is not text/plain")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError("policy is larger than 64 KiB")
        return parse_policy(body.decode("utf-8", errors="replace"), policy_id)


def _in_force(cached: _Cached | None) -> Policy | None:
    if cached is None or cached.policy.mode == "none":
        return None
    return cached.policy
