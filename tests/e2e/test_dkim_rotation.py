"""DKIM key rotation and Ed25519 (RFC 8463) end to end: mail signed before, during and after a
rotation verifies with dkimpy against what the loopback DNS server holds at that moment."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import dkim
import dns.resolver
import httpx

from remails.cli import cmd_domain_rotate_key
from remails.crypto import load_master_key
from remails.db import Pool, credentials, dkim_keys, domains
from remails.dkim_rotation import new_selector, sweep_rotations
from remails.dns import make_resolver
from remails.runtime import Runtime
from tests.e2e.conftest import World, message_status
from tests.factories import Tenant
from tests.support.sink import Sink
from tests.support.wait import wait_until

DOMAIN = "example.test"


def _dns_now(world: World):  # type: ignore[no-untyped-def]
    """dkimpy's key lookup, asking the test's DNS server every time (no cache)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return lookup


def _signatures(world: World, data: bytes) -> dict[bytes, bytes]:
    """selector → algorithm of every DKIM signature, each verified against DNS as it is now."""
    verifier = dkim.DKIM(data)
    headers, _ = dkim.rfc822_parse(data)
    found: dict[bytes, bytes] = {}
    for index in range(sum(1 for name, _ in headers if name.lower() == b"dkim-signature")):
        assert verifier.verify(idx=index, dnsfunc=_dns_now(world)), f"signature {index} does not verify"
        found[verifier.signature_fields[b"s"]] = verifier.signature_fields[b"a"]
    return found


async def _mail(world: World, runtime: Runtime, tenant: Tenant, sink: Sink) -> bytes:
    assert runtime.db is not None
    pool = runtime.db.pool
    before = len(sink.received)
    message_id = await world.submit(runtime, tenant, ["user@dest.test"])
    await wait_until(lambda: len(sink.received) == before + 1)

    async def delivered() -> bool:
        return await message_status(pool, message_id) == "delivered"

    await wait_until(delivered)
    return sink.received[-1].data


def _publish(world: World, view: dict[str, Any], selector: str) -> None:
    record = next(r for r in view["dns_records"] if r["name"].startswith(f"{selector}._domainkey."))
    world.dns.zone.txt(record["name"], record["value"])


async def _sweep(runtime: Runtime) -> None:
    """One more pass of the rotation sweep, as the tick runs it, at a moment the test chooses."""
    settings = runtime.settings
    await sweep_rotations(
        runtime.db.pool,  # type: ignore[union-attr]
        load_master_key(settings.secret_key, settings.data_dir),
        make_resolver(settings),
        rotation_days=settings.dkim_rotation_days,
        grace_days=settings.dkim_rotation_grace_days,
    )


async def _listed(pool: Pool) -> set[str]:
    domain = await domains.get_domain_by_name(pool, DOMAIN)
    assert domain is not None
    keys = await dkim_keys.keys_of_domain(pool, domain.id)
    return {domain.dkim_selector, *(k.selector for k in keys)}


async def test_mail_before_during_and_after_a_rotation_verifies(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.40")
    runtime = await world.runtime(dkim_rotation_grace_days=30)
    assert runtime.db is not None
    pool = runtime.db.pool
    tenant = await world.tenant(runtime, DOMAIN)
    old = (await domains.get_domain_by_name(pool, DOMAIN)).dkim_selector  # type: ignore[union-attr]

    before = await _mail(world, runtime, tenant, sink)
    assert _signatures(world, before) == {old.encode(): b"rsa-sha256"}

    # The rotation: a new RSA selector and an Ed25519 one, listed at once, signing not yet.
    args = argparse.Namespace(domain=DOMAIN, org=None, ed25519=True)
    view = await cmd_domain_rotate_key(args, runtime.settings)
    states = {k["selector"]: (k["algorithm"], k["state"]) for k in view["dkim_keys"]}
    new_rsa = next(s for s, (a, st) in states.items() if a == "rsa-sha256" and st == "pending")
    new_ed = next(s for s, (a, st) in states.items() if a == "ed25519-sha256" and st == "pending")
    names = [r["name"] for r in view["dns_records"]]
    assert f"{new_rsa}._domainkey.{DOMAIN}" in names and f"{new_ed}._domainkey.{DOMAIN}" in names
    assert any("k=ed25519" in r["value"] for r in view["dns_records"])

    await _sweep(runtime)  # a sweep looks for the new records, finds none: nothing changes
    during = await _mail(world, runtime, tenant, sink)  # DNS lacks the new keys: the old one signs
    assert _signatures(world, during) == {old.encode(): b"rsa-sha256"}

    _publish(world, view, new_rsa)
    _publish(world, view, new_ed)

    async def promoted() -> bool:
        domain = await domains.get_domain_by_name(pool, DOMAIN)
        return domain is not None and domain.dkim_selector == new_rsa

    await wait_until(promoted)  # the sweep saw the records in DNS
    after = await _mail(world, runtime, tenant, sink)
    assert _signatures(world, after) == {new_rsa.encode(): b"rsa-sha256", new_ed.encode(): b"ed25519-sha256"}
    # The old key is in its grace period: still listed, and mail it signed still verifies.
    await _sweep(runtime)
    assert old in await _listed(pool)
    assert _signatures(world, before) == {old.encode(): b"rsa-sha256"}
    assert _signatures(world, during) == {old.encode(): b"rsa-sha256"}

    # Past the grace period (a runtime with none left): the old key is retired and unlisted.
    await runtime.stop()
    world.runtimes.remove(runtime)
    runtime = await world.runtime(dkim_rotation_grace_days=0)
    assert runtime.db is not None
    pool = runtime.db.pool

    async def retired() -> bool:
        return old not in await _listed(pool)

    await wait_until(retired)
    assert await _listed(pool) == {new_rsa, new_ed}
    world.dns.zone.remove(f"{old}._domainkey.{DOMAIN}")  # the customer unpublishes it
    last = await _mail(world, runtime, tenant, sink)
    assert _signatures(world, last) == {new_rsa.encode(): b"rsa-sha256", new_ed.encode(): b"ed25519-sha256"}
    sealed = await pool.fetchval("SELECT private_sealed FROM dkim_keys WHERE selector = $1", old)
    assert sealed is None  # the retired private key is erased


async def test_the_schedule_starts_a_rotation_when_a_key_is_due(world: World) -> None:
    runtime = await world.runtime(dkim_rotation_days=1e-9)
    assert runtime.db is not None
    pool = runtime.db.pool
    await world.tenant(runtime, DOMAIN)
    first = await _listed(pool)

    async def rotating() -> bool:
        return len(await _listed(pool)) > len(first)

    await wait_until(rotating)
    domain = await domains.get_domain_by_name(pool, DOMAIN)
    assert domain is not None
    pending = [k for k in await dkim_keys.keys_of_domain(pool, domain.id) if k.state == "pending"]
    assert [k.algorithm for k in pending] == ["rsa-sha256"]  # RSA only: the domain had no Ed25519 key
    assert domain.dkim_selector in first  # not signing before DNS holds it


async def test_the_api_starts_a_rotation_once_and_lists_the_new_record(world: World) -> None:
    runtime = await world.runtime()
    assert runtime.db is not None and runtime.api is not None
    pool = runtime.db.pool
    tenant = await world.tenant(runtime, DOMAIN)
    domain = await domains.get_domain_by_name(pool, DOMAIN)
    assert domain is not None
    _, admin = await credentials.create_api_key(pool, tenant.org_id, "admin")
    _, maintainer = await credentials.create_api_key(pool, tenant.org_id, "maintainer")
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        url = f"/v1/domains/{domain.id}/rotate-key"
        refused = await client.post(url, headers={"Authorization": f"Bearer {maintainer}"})
        assert refused.status_code == 403
        started = await client.post(url, headers={"Authorization": f"Bearer {admin}"})
        assert started.status_code == 200, started.text
        body = started.json()
        assert body["dkim_selector"] == domain.dkim_selector  # the old key signs until DNS has the new
        names = {r["name"] for r in body["dns_records"]}
        new = [k for k in await dkim_keys.keys_of_domain(pool, domain.id) if k.state == "pending"]
        assert [k.algorithm for k in new] == ["rsa-sha256"]
        assert f"{new[0].selector}._domainkey.{DOMAIN}" in names
        assert f"{domain.dkim_selector}._domainkey.{DOMAIN}" in names
        again = await client.post(url, headers={"Authorization": f"Bearer {admin}"})
        assert again.status_code == 409 and again.json()["error"]["field"] == "domain", again.text


def test_new_selectors_are_dated_and_never_reused() -> None:
    today = datetime(2026, 12, 1, tzinfo=UTC)
    assert new_selector(dkim_keys.RSA, today, {"rm202612"}) == "rm20261201"
    assert new_selector(dkim_keys.ED25519, today, set()) == "rme20261201"
    assert new_selector(dkim_keys.RSA, today, {"rm20261201", "rm20261201a"}) == "rm20261201b"
