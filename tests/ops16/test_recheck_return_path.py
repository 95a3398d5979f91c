"""The periodic DNS re-check also looks at a verified return path (rp.<domain>): its MX or SPF
removed turns the domain invalid (one `domain.invalid`), restored valid again (`domain.valid`);
a domain without a verified return path is judged on its own records only. Real PostgreSQL,
the loopback DNS server, the dns_check function called as the tick calls it."""

from __future__ import annotations

from uuid import UUID

from cloudevents.http import CloudEvent

from remails import return_path
from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, domains, inbound
from remails.domain_records import expected_records, return_path_records
from remails.events import EventType
from remails_functions.dns_check import handle_tick
from tests.factories import make_tenant
from tests.support.dnsserver import LocalDns
from tests.support.recording import RecordingPublisher


async def _publish(pool: Pool, dns: LocalDns, settings: Settings, name: str) -> UUID:
    """The domain's own records, in DNS."""
    domain = await domains.get_domain_by_name(pool, name)
    assert domain is not None
    for record in expected_records(name, domain.dkim_selector, domain.dkim_public_key, settings.outbound_ips):
        dns.zone.txt(record.name, record.value)
    return domain.id


def _publish_return_path(dns: LocalDns, settings: Settings, name: str) -> str:
    rp = return_path.return_path_domain(name)
    for record in return_path_records(rp, settings.hostname, settings.outbound_ips):
        if record.type == "MX":
            dns.zone.mx(rp, record.value.split()[1].rstrip("."), int(record.value.split()[0]))
        else:
            dns.zone.txt(rp, record.value)
    return rp


async def _tick(ctx: Context) -> None:
    await ctx.pool.execute("UPDATE domains SET last_checked_at = NULL")  # every domain due now
    await handle_tick(ctx, CloudEvent({"type": EventType.TICK.value, "source": "/test"}, None))


async def _state(pool: Pool, domain_id: UUID) -> tuple[str, list[str]]:
    status = await pool.fetchval("SELECT status FROM domains WHERE id = $1", domain_id)
    kinds = await pool.fetch(
        "SELECT kind FROM notifications WHERE subject_id = $1 ORDER BY created_at", domain_id
    )
    return str(status), [r["kind"] for r in kinds]


async def test_a_removed_return_path_mx_or_spf_makes_the_domain_invalid_and_restored_valid(
    pool: Pool, settings: Settings, local_dns: LocalDns
) -> None:
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    await make_tenant(pool, settings, "rp-recheck.test")
    domain_id = await _publish(pool, local_dns, settings, "rp-recheck.test")
    rp = _publish_return_path(local_dns, settings, "rp-recheck.test")
    await inbound.record_return_path(pool, domain_id, {"domain": rp, "verified": True}, True)

    await _tick(ctx)
    assert await _state(pool, domain_id) == ("verified", [])

    local_dns.zone.remove(rp, "MX")
    await _tick(ctx)
    assert await _state(pool, domain_id) == ("invalid", ["domain.invalid"])
    details = await pool.fetchval("SELECT details FROM notifications WHERE subject_id = $1", domain_id)
    assert details["checks"]["return_path"]["ok"] is False
    assert details["checks"]["dkim"]["ok"] is True  # the domain's own records are fine
    await _tick(ctx)  # still missing: no second notification
    assert await _state(pool, domain_id) == ("invalid", ["domain.invalid"])

    local_dns.zone.remove(rp, "TXT")
    local_dns.zone.mx(rp, settings.hostname)
    await _tick(ctx)  # MX back, SPF gone: still invalid
    assert await _state(pool, domain_id) == ("invalid", ["domain.invalid"])

    local_dns.zone.remove(rp)
    _publish_return_path(local_dns, settings, "rp-recheck.test")
    await _tick(ctx)
    assert await _state(pool, domain_id) == ("verified", ["domain.invalid", "domain.valid"])
    # The return path stays set up through it all: the status tells, the sender is not changed.
    assert await pool.fetchval("SELECT return_path_verified_at FROM domains WHERE id = $1", domain_id)


async def test_a_domain_without_a_verified_return_path_is_judged_on_its_own_records(
    pool: Pool, settings: Settings, local_dns: LocalDns
) -> None:
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    await make_tenant(pool, settings, "no-rp-recheck.test")
    domain_id = await _publish(pool, local_dns, settings, "no-rp-recheck.test")
    await _tick(ctx)  # rp.no-rp-recheck.test has no records at all
    assert await _state(pool, domain_id) == ("verified", [])


async def test_a_return_path_lookup_that_times_out_changes_nothing(
    pool: Pool, settings: Settings, local_dns: LocalDns
) -> None:
    ctx = Context(settings, pool, RecordingPublisher(), load_master_key(None, settings.data_dir))
    await make_tenant(pool, settings, "rp-timeout.test")
    domain_id = await _publish(pool, local_dns, settings, "rp-timeout.test")
    rp = return_path.return_path_domain("rp-timeout.test")
    local_dns.zone.txt(rp, "v=spf1 -all")
    # A record the server cannot encode: it drops the query, the resolver times out.
    local_dns.zone.add(rp, "MX", (10, 12345))
    try:
        await inbound.record_return_path(pool, domain_id, {"domain": rp, "verified": True}, True)
        await _tick(ctx)
        assert await _state(pool, domain_id) == ("verified", [])
        verification = await pool.fetchval("SELECT verification FROM domains WHERE id = $1", domain_id)
        assert verification == {"forced": True}  # nothing stored: the answer is unknown
    finally:
        local_dns.zone.remove(rp)
