"""End to end through the all-in-one runtime: SMTP in, DKIM-signed delivery out from the right
IP, retries, bounces and suppression, expiry, quota holds."""

from __future__ import annotations

import dkim
import dns.resolver
import httpx
from cloudevents.http import CloudEvent

from remails.bus import Trigger
from remails.db import credentials, egress, orgs
from remails.events import EventType, MessageEvent, make_event
from tests.e2e.conftest import World, message_status
from tests.factories import store_message
from tests.support.db import as_dict, one_row
from tests.support.wait import wait_until


def _dns_txt(world: World):  # type: ignore[no-untyped-def]
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return lookup


async def test_delivered_to_each_domains_mx_signed_and_from_the_shared_pool(world: World) -> None:
    sink_a = await world.sink("dest-a.test", "127.0.0.10")
    sink_b = await world.sink("dest-b.test", "127.0.0.11")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    message_id = await world.submit(
        runtime, tenant, ["one@dest-a.test", "two@dest-a.test", "three@dest-b.test"]
    )
    await wait_until(lambda: len(sink_a.received) == 1 and len(sink_b.received) == 1)
    await wait_until(lambda: _is(pool, message_id, "delivered"))

    got_a, got_b = sink_a.received[0], sink_b.received[0]
    assert sorted(got_a.rcpt_tos) == ["one@dest-a.test", "two@dest-a.test"]  # one transaction per domain
    assert got_b.rcpt_tos == ["three@dest-b.test"]
    assert got_a.helo == "mx.remails.test"
    assert got_a.tls_version and got_a.tls_version.startswith("TLSv1")  # opportunistic, unverified cert
    assert got_a.peer_ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # shared pool: no dedicated IPs
    assert dkim.verify(got_a.data, dnsfunc=_dns_txt(world))
    assert b"d=example.test" in got_a.data.split(b"\r\n\r\n")[0]

    attempts = await pool.fetch("SELECT mx_host, host(source_ip) AS ip, tls_version, code FROM attempts")
    assert sorted(a["mx_host"] for a in attempts) == ["mx-127.0.0.10.test", "mx-127.0.0.11.test"]
    assert all(a["code"] == 250 and a["ip"] == got_a.peer_ip for a in attempts)


async def _is(pool, message_id: str, status: str) -> bool:  # type: ignore[no-untyped-def]
    return await message_status(pool, message_id) == status


async def test_dedicated_pool_for_one_org_shared_pool_for_another(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    assert runtime.db is not None
    pool = runtime.db.pool
    dedicated = await world.tenant(runtime, "dedicated.test")
    shared = await world.tenant(runtime, "shared.test")
    ip_pool = await egress.create_ip_pool(pool, "dedicated", ["127.0.0.3"])
    await orgs.set_ip_pool(pool, dedicated.org_id, ip_pool.id)
    for i in range(4):
        await world.submit(runtime, dedicated, [f"d{i}@dest.test"])
        await world.submit(runtime, shared, [f"s{i}@dest.test"])
    await wait_until(lambda: len(sink.received) == 8)
    peers: dict[str, set[str]] = {r.mail_from.split("@")[1]: set() for r in sink.received}
    for r in sink.received:
        peers[r.mail_from.split("@")[1]].add(r.peer_ip)
    assert peers["dedicated.test"] == {"127.0.0.3"}
    assert "127.0.0.3" not in peers["shared.test"]
    assert peers["shared.test"] <= {"127.0.0.2", "127.0.0.4"}


async def test_two_temporary_failures_then_delivered_on_the_third_attempt(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.data_replies.extend(["451 4.3.0 try later", "421 4.7.0 busy"])
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    message_id = await world.submit(runtime, tenant, ["user@dest.test"])
    await wait_until(lambda: _is(pool, message_id, "delivered"), bound=20)
    assert len(sink.received) == 1
    row = await one_row(pool, "SELECT attempts FROM messages WHERE id = $1::uuid", message_id)
    assert row["attempts"] == 3
    codes = [a["code"] for a in await pool.fetch("SELECT code FROM attempts ORDER BY started_at, id")]
    assert codes == [451, 421, 250]


async def test_a_hard_bounce_bounces_and_suppresses_the_next_send(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    sink.handler.rcpt_replies["gone@dest.test"] = "550 5.1.1 No such user"
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    first = await world.submit(runtime, tenant, ["gone@dest.test"])
    await wait_until(lambda: _is(pool, first, "bounced"))
    recipient = await one_row(pool, "SELECT status, last_code, last_enhanced, last_text FROM recipients")
    assert tuple(recipient) == ("bounced", 550, "5.1.1", "No such user")
    assert await pool.fetchval("SELECT reason FROM suppressions WHERE address = 'gone@dest.test'") is not None

    second = await world.submit(runtime, tenant, ["Gone@dest.test", "ok@dest.test"])
    await wait_until(lambda: _is(pool, second, "delivered"))
    statuses = await as_dict(
        pool, "SELECT address, status::text FROM recipients WHERE message_id = $1::uuid", second
    )
    assert statuses == {"Gone@dest.test": "suppressed", "ok@dest.test": "delivered"}
    assert [r.rcpt_tos for r in sink.received] == [["ok@dest.test"]]


async def test_an_mx_that_does_not_answer_is_retried_then_failed(world: World) -> None:
    world.dns.zone.mx("silent.test", "mx.silent.test")
    world.dns.zone.a("mx.silent.test", "127.0.0.99")  # nothing listens there
    runtime = await world.runtime(message_lifetime_seconds=2)
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    pool = runtime.db.pool
    message_id = await world.submit(runtime, tenant, ["user@silent.test"])
    await wait_until(lambda: _is(pool, message_id, "failed"), bound=20)
    attempts = await pool.fetchval("SELECT attempts FROM messages WHERE id = $1::uuid", message_id)
    assert attempts >= 2
    recipient = await one_row(pool, "SELECT status, last_code, last_enhanced FROM recipients")
    assert tuple(recipient) == ("failed", None, "4.4.1")


async def test_quota_exhaustion_holds_the_message_until_quota_returns(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test", quota=1)
    assert runtime.db is not None
    pool = runtime.db.pool
    first = await world.submit(runtime, tenant, ["a@dest.test"])
    await wait_until(lambda: _is(pool, first, "delivered"))
    # Accepted by another edge replica a moment before the quota ran out: the edge's check
    # passed, the quota function's atomic count does not.
    held = await store_message(pool, tenant, ["b@dest.test"])
    data = MessageEvent(message_id=held, organization_id=tenant.org_id, project_id=tenant.project_id)
    await runtime.bus.publish(make_event(EventType.MESSAGE_RECEIVED, data))
    await wait_until(lambda: _is(pool, str(held), "held"))
    assert await pool.fetchval("SELECT reason FROM messages WHERE id = $1", held) == "monthly quota used up"
    assert await pool.fetchval("SELECT quota_used FROM organizations WHERE id = $1", tenant.org_id) == 1
    await pool.execute("UPDATE organizations SET monthly_quota = 10 WHERE id = $1", tenant.org_id)
    await wait_until(lambda: _is(pool, str(held), "delivered"))
    assert len(sink.received) == 2


async def test_sent_by_http_is_delivered_end_to_end(world: World) -> None:
    sink = await world.sink("dest.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.api is not None
    pool = runtime.db.pool
    _, token = await credentials.create_api_key(pool, tenant.org_id, "maintainer")
    host, port = runtime.api.address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        response = await client.post(
            f"/v1/projects/{tenant.project_id}/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "from": "app@example.test",
                "to": ["user@dest.test"],
                "subject": "hi",
                "html": "<b>hi</b>",
                "label": "welcome",
            },
        )
        assert response.status_code == 202, response.text
        message_id = response.json()["id"]
        await wait_until(lambda: _is(pool, message_id, "delivered"))
        shown = (
            await client.get(f"/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"})
        ).json()
    assert shown["status"] == "delivered" and shown["label"] == "welcome"
    assert shown["recipients"][0]["last_code"] == 250
    assert shown["attempt_log"][0]["mx_host"] == "mx-127.0.0.10.test"
    [received] = sink.received
    assert dkim.verify(received.data, dnsfunc=_dns_txt(world))
    assert (world.settings().data_dir / "admin-token").stat().st_mode & 0o777 == 0o600


async def test_an_ipv6_egress_source_delivers_to_the_mx_aaaa_address(world: World) -> None:
    sink = await world.sink("dest6.test", "::1")
    runtime = await world.runtime(outbound_ips="::1")
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None
    message_id = await world.submit(runtime, tenant, ["user@dest6.test"])
    await wait_until(lambda: _is(runtime.db.pool, message_id, "delivered"))  # type: ignore[union-attr]
    assert [r.peer_ip for r in sink.received] == ["::1"]
    attempt = await one_row(runtime.db.pool, "SELECT host(source_ip) AS ip, mx_host FROM attempts")
    assert tuple(attempt) == ("::1", "mx-xx1.test")


async def test_the_all_in_one_sender_decides_its_attempts_without_a_delivery_attempted_hop(
    world: World,
) -> None:
    """Sharing retry's process, the sender decides each attempt itself and publishes the outcome:
    a delivered message and a deferred one both skip `attempted`, and the retry schedule and the
    later delivery are the same as the retry function gives."""
    sink = await world.sink("dest-a.test", "127.0.0.10")
    runtime = await world.runtime()
    tenant = await world.tenant(runtime, "example.test")
    assert runtime.db is not None and runtime.bus is not None
    pool = runtime.db.pool
    seen: list[tuple[str, str]] = []

    async def record(event: CloudEvent) -> None:
        seen.append((event["type"], event["msgid"]))

    runtime.bus.subscribe(Trigger("test-recorder", [{"prefix": {"type": ""}}], record))
    sink.handler.data_replies.append("451 4.3.0 try again")
    deferred_first = await world.submit(runtime, tenant, ["one@dest-a.test"])
    await wait_until(lambda: _is(pool, deferred_first, "delivered"))

    kinds = [kind for kind, msgid in seen if msgid == deferred_first]
    assert "delivery.attempted" not in kinds
    assert kinds.count("message.deferred") == 1 and kinds.count("message.delivered") == 1
    row = await one_row(
        pool, "SELECT attempts, lease_owner FROM messages WHERE id = $1::uuid", deferred_first
    )
    assert (row["attempts"], row["lease_owner"]) == (2, None)
    assert len(sink.received) == 1
