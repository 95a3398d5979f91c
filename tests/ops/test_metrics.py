"""`/metrics` of `remails up` with two workers: every family, summed over the workers, after
messages were delivered, deferred and bounced, read with prometheus_client's own parser."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from pathlib import Path

import asyncpg
import httpx
import pytest
from cloudevents.conversion import to_binary
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from remails.config import Settings
from remails.crypto import load_master_key
from remails.db import Pool, credentials
from remails.db.messages import NewMessage, insert_message
from remails.events import EventType, MessageEvent, make_event
from remails.metrics import MetricsListener
from remails.webhook_endpoints import create_endpoint
from tests.e2e.conftest import World
from tests.factories import make_tenant
from tests.infra.test_functions_http import serve
from tests.ops.spawn import remails_up
from tests.support.receiver import Receiver
from tests.support.sink import free_port
from tests.support.wait import wait_until


def parse(text: str) -> dict[str, list[Sample]]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels`."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


async def test_metrics_count_every_outcome_across_two_workers(world: World, tmp_path: Path) -> None:
    delivered_sink = await world.sink("dest.test", "127.0.0.10")
    deferring = await world.sink("later.test", "127.0.0.11")
    deferring.handler.rcpt_replies["busy@later.test"] = "451 4.2.0 mailbox busy, try later"
    bouncing = await world.sink("gone.test", "127.0.0.12")
    bouncing.handler.rcpt_replies["nobody@gone.test"] = "550 5.1.1 no such user"
    receiver = Receiver()
    receiver.statuses.append(500)  # the first webhook POST fails and is retried
    await receiver.start()

    creator = await world.runtime(outbound_ips="127.0.0.9", webhooks_allow_private=True)
    tenant = await world.tenant(creator, "example.test")
    assert creator.db is not None
    master_key = load_master_key(creator.settings.secret_key, creator.settings.data_dir)
    await create_endpoint(
        creator.db.pool, creator.settings, master_key, tenant.project_id, receiver.url, ["message.bounced"]
    )
    _, token = await credentials.create_api_key(creator.db.pool, tenant.org_id, "maintainer", None)
    await creator.stop()
    world.runtimes.remove(creator)
    settings = world.settings()
    env = {
        "REMAILS_WORKERS": "2",
        "REMAILS_DB_POOL_SIZE": "4",
        "REMAILS_DATABASE_URL": str(settings.database_url),
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_HOSTNAME": "mx.remails.test",
        "REMAILS_TLS_CERT": str(settings.tls_cert),
        "REMAILS_TLS_KEY": str(settings.tls_key),
        "REMAILS_DNS_SERVERS": world.dns.servers,
        "REMAILS_OUTBOUND_IPS": "127.0.0.2",
        "REMAILS_DELIVERY_PORT": str(world.sink_port),
        "REMAILS_HEARTBEAT_SECONDS": "0.5",
        "REMAILS_TICK_SECONDS": "0.2",
        "REMAILS_WEBHOOKS_ALLOW_PRIVATE": "true",
        "REMAILS_WEBHOOK_RETRY_SCHEDULE": "0s,100ms,100ms",
    }
    async with remails_up(env, tmp_path / "up.log") as up:
        for i in range(2):
            await world.submit(up.submission, tenant, [f"u{i}@dest.test"])
        async with httpx.AsyncClient() as client:
            sent = await client.post(
                f"http://127.0.0.1:{up.api}/v1/projects/{tenant.project_id}/messages",
                headers={"Authorization": f"Bearer {token}"},
                json={"from": f"app@{tenant.domain}", "to": ["u2@dest.test"], "subject": "s", "text": "hi"},
                timeout=10,
            )
            assert sent.status_code == 202, sent.text
        await world.submit(up.submission, tenant, ["busy@later.test"])
        await world.submit(up.submission, tenant, ["nobody@gone.test"])
        context = ssl.create_default_context()
        world.ca.configure_trust(context)
        with smtplib.SMTP("127.0.0.1", up.submission, local_hostname="app.test") as smtp:
            smtp.starttls(context=context)
            smtp.ehlo()
            smtp.user, smtp.password = tenant.username, "not the password"
            try:
                smtp.auth("PLAIN", smtp.auth_plain)  # one try (login() would try each mechanism)
            except smtplib.SMTPAuthenticationError as exc:
                assert exc.smtp_code == 535
            else:
                raise AssertionError("a wrong password was accepted")

        conn = await asyncpg.connect(str(settings.database_url))
        try:

            async def settled() -> bool:
                rows = await conn.fetch("SELECT status::text, count(*) FROM messages GROUP BY 1")
                return {r[0]: r[1] for r in rows} == {"delivered": 3, "deferred": 1, "bounced": 1}

            await wait_until(settled, bound=30)
            await wait_until(lambda: len(receiver.calls) == 2, bound=30)  # 500, then 200
        finally:
            await conn.close()

        response = await up.get(up.metrics, "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        metrics = parse(response.text)
    await receiver.stop()

    accepted = metrics["remails_messages_accepted"]
    assert value(accepted, "remails_messages_accepted_total", via="smtp") == 4
    assert value(accepted, "remails_messages_accepted_total", via="http") == 1
    finished = metrics["remails_messages_finished"]
    assert value(finished, "remails_messages_finished_total", status="delivered") == 3
    assert value(finished, "remails_messages_finished_total", status="bounced") == 1
    assert not [s for s in finished if s.labels.get("status") == "deferred"]  # not final
    attempts = metrics["remails_delivery_attempts"]
    assert value(attempts, "remails_delivery_attempts_total", result="delivered") == 3
    assert value(attempts, "remails_delivery_attempts_total", result="deferred") == 1
    assert value(attempts, "remails_delivery_attempts_total", result="bounced") == 1
    latency = metrics["remails_accept_to_final_seconds"]
    assert value(latency, "remails_accept_to_final_seconds_count") == 4
    assert 0 < value(latency, "remails_accept_to_final_seconds_sum") < 60
    assert value(latency, "remails_accept_to_final_seconds_bucket", le="+Inf") == 4
    queue = metrics["remails_queue_messages"]
    assert value(queue, "remails_queue_messages", status="deferred") == 1
    assert value(queue, "remails_queue_messages", status="received") == 0
    sessions = metrics["remails_smtp_sessions"]
    assert value(sessions, "remails_smtp_sessions_total", port="submission") == 5
    assert value(metrics["remails_smtp_auth_failures"], "remails_smtp_auth_failures_total") == 1
    assert value(metrics["remails_bus_dead_letters"], "remails_bus_dead_letters_total") == 0
    hooks = metrics["remails_webhook_deliveries"]
    assert value(hooks, "remails_webhook_deliveries_total", result="retrying") == 1
    assert value(hooks, "remails_webhook_deliveries_total", result="delivered") == 1
    assert value(metrics["remails_webhook_backlog"], "remails_webhook_backlog") == 0
    backup = metrics["remails_backup_last_success_timestamp_seconds"]
    assert value(backup, "remails_backup_last_success_timestamp_seconds") == 0  # never
    assert value(metrics["remails_domains"], "remails_domains", state="verified") == 1
    assert value(metrics["remails_database_up"], "remails_database_up") == 1
    # Summed over both workers: each has a main pool of 4.
    pool_max = metrics["remails_db_pool_max_connections"]
    assert value(pool_max, "remails_db_pool_max_connections", pool="main") == 8
    assert "process_resident_memory_bytes" in metrics
    # No tenant, domain or address in any label.
    for samples in metrics.values():
        for sample in samples:
            for label in sample.labels.values():
                assert "@" not in label and "example.test" not in label and str(tenant.org_id) not in label
    assert delivered_sink.received and not deferring.received and not bouncing.received


async def test_a_function_process_serves_its_own_counts(pool: Pool, settings: Settings, dsn: str) -> None:
    """Under functions-framework (the cluster's function pods) the counts are served too."""
    tenant = await make_tenant(pool, settings, "example.test")
    raw = b"From: someone@elsewhere.test\r\nTo: user@dest.test\r\nSubject: s\r\n\r\nhi\r\n"
    new = NewMessage(
        tenant.org_id, tenant.project_id, "someone@elsewhere.test", ["user@dest.test"], raw, "<x@y>"
    )
    message_id = await insert_message(pool, new, 3600)
    port = free_port("127.0.0.1")
    env = {
        "REMAILS_DATABASE_URL": dsn,
        "REMAILS_BUS": "knative",
        "K_SINK": "http://127.0.0.1:9/",
        "REMAILS_DATA_DIR": str(settings.data_dir),
        "REMAILS_METRICS_LISTEN": f"127.0.0.1:{port}",
    }
    event = make_event(
        EventType.MESSAGE_RECEIVED,
        MessageEvent(message_id=message_id, organization_id=tenant.org_id, project_id=tenant.project_id),
    )
    headers, body = to_binary(event)
    async with serve("validate", env) as url, httpx.AsyncClient() as client:
        answer = await client.post(url, headers={**headers, "Prefer": "reply"}, content=body, timeout=30)
        assert answer.status_code == 200 and answer.headers["ce-type"] == "message.rejected"
        scraped = parse((await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text)
    finished = scraped["remails_messages_finished"]
    assert value(finished, "remails_messages_finished_total", status="rejected") == 1
    assert (
        value(scraped["remails_db_pool_max_connections"], "remails_db_pool_max_connections", pool="main") == 2
    )


async def test_a_taken_metrics_port_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        listener = MetricsListener("127.0.0.1", port, database=None)
        with caplog.at_level(logging.ERROR, logger="remails.metrics"):
            await listener.start()  # neither raises nor takes the event loop down
        await listener.stop()
    assert [r.getMessage() for r in caplog.records] == ["metrics listener not started"]
    assert caplog.records[0].listen == f"127.0.0.1:{port}"  # type: ignore[attr-defined]
