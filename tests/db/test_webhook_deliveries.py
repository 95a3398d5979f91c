"""The webhook outbox against a real PostgreSQL: a fair claim, leases that a stale worker
cannot overwrite, and an endpoint disabled for failing that drops what it still had."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from remails.config import Settings
from remails.db import Pool, notifications, webhook_deliveries, webhook_endpoints
from remails.db.rows import required
from tests.factories import Tenant, make_tenant

LEASE = 30.0


async def _endpoint(pool: Pool, tenant: Tenant) -> UUID:
    endpoint = await webhook_endpoints.create_endpoint(
        pool, uuid4(), tenant.project_id, "https://hooks.example.test/hook", ["message.delivered"], b"sealed"
    )
    return endpoint.id


async def _queue(pool: Pool, endpoint_id: UUID, count: int, age_seconds: float) -> list[UUID]:
    """`count` pending deliveries, due since `age_seconds` ago."""
    ids = []
    for _ in range(count):
        delivery_id = await webhook_deliveries.enqueue_test(pool, endpoint_id, {"type": "webhook.test"})
        assert delivery_id is not None
        ids.append(delivery_id)
    await pool.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = now() - make_interval(secs => $2)"
        " WHERE id = ANY($1)",
        ids,
        age_seconds,
    )
    return ids


async def _claim(pool: Pool, limit: int = 20, per_endpoint: int = 5) -> list[webhook_deliveries.Delivery]:
    return await webhook_deliveries.claim_due(pool, None, limit, per_endpoint, LEASE)


async def test_a_disabled_endpoints_backlog_does_not_hold_back_other_tenants(
    pool: Pool, settings: Settings
) -> None:
    noisy = await make_tenant(pool, settings, "noisy.test")
    quiet = await make_tenant(pool, settings, "quiet.test")
    paused = await _endpoint(pool, noisy)
    await _queue(pool, paused, 25, age_seconds=3600)  # older than anything else, then disabled
    await webhook_endpoints.update_endpoint(pool, paused, url=None, events=None, enabled=False)
    wanted = await _queue(pool, await _endpoint(pool, quiet), 1, age_seconds=1)

    claimed = await _claim(pool)

    assert [d.id for d in claimed] == wanted
    assert await webhook_deliveries.enqueue_test(pool, paused, {"type": "webhook.test"}) is None


async def test_one_tenants_flood_does_not_starve_another_in_the_first_claim(
    pool: Pool, settings: Settings
) -> None:
    flood = await make_tenant(pool, settings, "flood.test")
    calm = await make_tenant(pool, settings, "calm.test")
    for _ in range(5):  # five endpoints of one organization, each with an older backlog
        await _queue(pool, await _endpoint(pool, flood), 10, age_seconds=3600)
    calm_endpoint = await _endpoint(pool, calm)
    wanted = await _queue(pool, calm_endpoint, 2, age_seconds=1)

    claimed = await _claim(pool, limit=20, per_endpoint=5)

    assert len(claimed) == 20
    assert set(wanted) <= {d.id for d in claimed}
    per_endpoint: dict[UUID, int] = {}
    for d in claimed:
        per_endpoint[d.endpoint_id] = per_endpoint.get(d.endpoint_id, 0) + 1
    assert max(per_endpoint.values()) <= 5
    assert len(per_endpoint) == 6  # every endpoint got a turn


async def test_a_stale_finish_records_nothing(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings)
    [delivery_id] = await _queue(pool, await _endpoint(pool, tenant), 1, age_seconds=1)
    [first] = await webhook_deliveries.claim_due(pool, None, 20, 5, 0.0)  # the lease runs out at once
    [second] = await webhook_deliveries.claim_due(pool, None, 20, 5, LEASE)  # another worker takes it
    assert first.id == second.id == delivery_id and first.lease_id != second.lease_id

    async def finish(lease: UUID, delivered: bool) -> webhook_deliveries.Finished | None:
        return await webhook_deliveries.finish_delivery(
            pool,
            delivery_id,
            lease,
            delivered=delivered,
            status_code=200 if delivered else 500,
            error=None if delivered else "HTTP 500",
            latency_ms=3,
            next_attempt_at=None,
            disable_after_seconds=3600,
        )

    assert await finish(first.lease_id, delivered=False) is None  # the first worker, late
    row = required(
        await pool.fetchrow(
            "SELECT status, attempts, lease_id, last_status_code FROM webhook_deliveries WHERE id = $1",
            delivery_id,
        )
    )
    assert dict(row) == {
        "status": "pending",
        "attempts": 2,
        "lease_id": second.lease_id,
        "last_status_code": None,
    }
    assert await pool.fetchval("SELECT failing_since FROM webhook_endpoints") is None

    assert await finish(second.lease_id, delivered=True) is not None
    assert await finish(second.lease_id, delivered=False) is None  # once only
    assert (
        await pool.fetchval("SELECT status FROM webhook_deliveries WHERE id = $1", delivery_id) == "delivered"
    )


async def test_an_endpoint_disabled_for_failing_drops_its_pending_deliveries(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings)
    bystander = await make_tenant(pool, settings, "bystander.test")
    failing = await _endpoint(pool, tenant)
    pending = await _queue(pool, failing, 3, age_seconds=60)
    [untouched] = await _queue(pool, await _endpoint(pool, bystander), 1, age_seconds=1)
    await pool.execute(
        "UPDATE webhook_endpoints SET failing_since = now() - interval '1 hour' WHERE id = $1", failing
    )
    [claimed] = await webhook_deliveries.claim_due(pool, None, 1, 5, LEASE)
    assert claimed.endpoint_id == failing

    finished = await webhook_deliveries.finish_delivery(
        pool,
        claimed.id,
        claimed.lease_id,
        delivered=False,
        status_code=503,
        error="HTTP 503",
        latency_ms=3,
        next_attempt_at=datetime.now(UTC) + timedelta(minutes=5),  # would be retried
        disable_after_seconds=600,
    )

    assert finished is not None and not finished.enabled and finished.disabled_now and finished.dropped == 2
    assert finished.disabled_reason is not None and finished.disabled_reason.startswith(
        "failing continuously"
    )
    statuses = await pool.fetch(
        "SELECT id, status, finished_at IS NOT NULL AS finished FROM webhook_deliveries WHERE id = ANY($1)",
        [*pending, untouched],
    )
    assert {r["id"]: (r["status"], r["finished"]) for r in statuses} == {
        **{d: ("dropped", True) for d in pending},
        untouched: ("pending", False),
    }
    [notice] = await notifications.list_notifications(pool, tenant.org_id, 10)
    assert notice["kind"] == "webhook.disabled" and notice["subject_id"] == failing
    assert await notifications.list_notifications(pool, bystander.org_id, 10) == []
    assert [d.id for d in await _claim(pool)] == [untouched]
