"""Group commit at the edge: several sessions' messages in one commit, each 250 only after
that commit, and a failed batch answered 451 in every one of its sessions."""

from __future__ import annotations

import asyncio
import dataclasses
from uuid import UUID, uuid4

import aiosmtplib
import asyncpg
import pytest

from remails.config import Settings
from remails.db import Pool, credentials
from remails.db.messages import NewMessage, insert_messages
from remails_smtp_edge.group_commit import GroupCommit, StoreFailed
from tests.factories import Tenant, make_tenant
from tests.smtp.conftest import Edge, EdgeFactory
from tests.support.postgres import PostgresServer
from tests.support.wait import wait_until

MESSAGE = b"From: app@example.test\r\nTo: user@dest.test\r\nSubject: code\r\n\r\nYour code is 123456.\r\n"
SESSIONS = 6


async def _ready_session(edge: Edge, i: int) -> aiosmtplib.SMTP:
    """A trusted-network session with its envelope given, waiting to send DATA."""
    client = edge.client()
    await client.connect()
    await client.mail("app@example.test")
    await client.rcpt(f"user{i}@dest.test")
    return client


async def _held_up(edge: Edge, dsn: str) -> tuple[asyncpg.Connection, asyncpg.Connection]:
    """An observer, and a connection holding a lock that makes the next insert wait."""
    observer = await asyncpg.connect(dsn)
    locker = await asyncpg.connect(dsn)
    await locker.execute("BEGIN; LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    return observer, locker


async def test_concurrent_sessions_share_one_commit_and_each_250_follows_it(
    edge_factory: EdgeFactory, dsn: str
) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8", smtp_accept_batch_max=32)
    group = edge.server.handler.group_commit
    clients = [await _ready_session(edge, i) for i in range(SESSIONS)]
    observer, locker = await _held_up(edge, dsn)
    try:
        visible_at_reply: list[bool] = []
        observing = asyncio.Lock()  # one query at a time on the observer's connection

        async def send(client: aiosmtplib.SMTP) -> None:
            response = await client.data(MESSAGE)
            assert response.code == 250, response
            message_id = response.message.rsplit(" ", 1)[1]
            async with observing:
                seen = await observer.fetchval(
                    "SELECT count(*) FROM messages WHERE id = $1::uuid", message_id
                )
            visible_at_reply.append(seen == 1)

        first = asyncio.create_task(send(clients[0]))

        async def insert_waits() -> bool:
            async with observing:
                return bool(await observer.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        await wait_until(insert_waits)  # the first batch (one message) is held up by the lock
        rest = [asyncio.create_task(send(c)) for c in clients[1:]]
        await wait_until(lambda: group.waiting == SESSIONS - 1)
        assert not any(t.done() for t in [first, *rest]), "250 while nothing was committed"
        assert await observer.fetchval("SELECT count(*) FROM messages") == 0
        await locker.execute("COMMIT")
        await asyncio.gather(first, *rest)
        assert visible_at_reply == [True] * SESSIONS, "a 250 before its row was committed"
        assert group.batches == 2  # the held-up one, then all the others in one statement
        assert await edge.stored_count() == SESSIONS
    finally:
        await locker.close()
        await observer.close()
        for client in clients:
            client.close()


async def test_a_failed_batch_answers_451_to_each_of_its_sessions_and_stores_nothing(
    edge_factory: EdgeFactory, dsn: str, postgres: PostgresServer
) -> None:
    edge = await edge_factory(trusted_cidr="127.0.0.0/8", smtp_accept_batch_max=32)
    group = edge.server.handler.group_commit
    clients = [await _ready_session(edge, i) for i in range(SESSIONS)]
    observer, locker = await _held_up(edge, dsn)
    database = await observer.fetchval("SELECT current_database()")
    admin = await asyncpg.connect(postgres.base_dsn)
    try:

        async def send(client: aiosmtplib.SMTP) -> tuple[int, str]:
            try:
                await client.data(MESSAGE)
            except aiosmtplib.SMTPDataError as exc:
                return exc.code, exc.message
            return 250, "stored"

        first = asyncio.create_task(send(clients[0]))

        async def insert_waits() -> bool:
            return bool(await observer.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        await wait_until(insert_waits)
        rest = [asyncio.create_task(send(c)) for c in clients[1:]]
        await wait_until(lambda: group.waiting == SESSIONS - 1)
        # The database goes away under the held-up batch, and stays away for the next one.
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        replies = await asyncio.gather(first, *rest)
        assert [(code, text[:5]) for code, text in replies] == [(451, "4.3.0")] * SESSIONS
        assert group.batches == 2
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        assert await edge.stored_count() == 0
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await admin.close()
        for conn in (locker, observer):
            if not conn.is_closed():
                conn.terminate()
        for client in clients:
            client.close()


def _new(tenant: Tenant, project_id: UUID | None = None) -> NewMessage:
    return NewMessage(
        tenant.org_id,
        project_id or tenant.project_id,
        "app@example.test",
        ["user@dest.test", "other@dest.test", "user@dest.test"],
        bytearray(MESSAGE),
        f"<{uuid4()}@example.test>",
    )


async def test_one_messages_own_error_does_not_refuse_the_rest_of_its_batch(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings)
    written: list[int] = []

    async def write(batch: list[NewMessage]) -> set[UUID]:
        written.append(len(batch))
        return await insert_messages(pool, batch, 3600)

    group = GroupCommit(write, max_size=8)
    good = [_new(tenant) for _ in range(3)]
    bad = _new(tenant, project_id=uuid4())  # no such project: a foreign key violation
    results = await asyncio.gather(
        *(group.store(m) for m in [good[0], bad, *good[1:]]), return_exceptions=True
    )
    assert results[0] is True and results[2:] == [True, True]
    assert isinstance(results[1], StoreFailed) and results[1].cause == "ForeignKeyViolationError"
    assert written == [4, 1, 1, 1, 1]  # one statement for all four failed, then each alone
    stored = await pool.fetch("SELECT id FROM messages WHERE id = ANY($1::uuid[])", [m.id for m in good])
    assert len(stored) == 3
    # Each message's distinct recipients, in the order given.
    rows = await pool.fetch("SELECT address FROM recipients WHERE message_id = $1 ORDER BY id", good[0].id)
    assert [r["address"] for r in rows] == ["user@dest.test", "other@dest.test"]


@pytest.mark.parametrize("max_size", [1, 8])
async def test_a_revoked_credential_leaves_its_message_out(
    pool: Pool, settings: object, max_size: int
) -> None:
    from remails.config import Settings

    assert isinstance(settings, Settings)
    tenant = await make_tenant(pool, settings)
    credential_id = await pool.fetchval(
        "SELECT id FROM smtp_credentials WHERE username = $1", tenant.username
    )
    live = NewMessage(**{**_new(tenant).__dict__, "smtp_credential_id": credential_id})
    assert await credentials.delete_smtp_credential(pool, credential_id)
    group = GroupCommit(lambda batch: insert_messages(pool, batch, 3600), max_size=max_size)
    trusted = _new(tenant)
    assert list(await asyncio.gather(group.store(live), group.store(trusted))) == [False, True]
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE id = $1", live.id) == 0


@pytest.mark.parametrize("count", [1, 3])
async def test_a_batch_stores_each_messages_distinct_recipients_in_order(
    pool: Pool, settings: Settings, count: int
) -> None:
    tenant = await make_tenant(pool, settings)
    batch = [
        dataclasses.replace(
            _new(tenant), recipients=[f"c{i}@dest.test", f"a{i}@dest.test", f"c{i}@dest.test"]
        )
        for i in range(count)
    ]
    assert await insert_messages(pool, batch, 3600) == {m.id for m in batch}
    for i, message in enumerate(batch):
        rows = await pool.fetch(
            "SELECT address, domain FROM recipients WHERE message_id = $1 ORDER BY id", message.id
        )
        assert [(r["address"], r["domain"]) for r in rows] == [
            (f"c{i}@dest.test", "dest.test"),
            (f"a{i}@dest.test", "dest.test"),
        ]
        stored = await pool.fetchrow(
            "SELECT size, raw, expires_at > now() AS live FROM messages WHERE id = $1", message.id
        )
        assert stored is not None and stored["size"] == len(MESSAGE) and bytes(stored["raw"]) == MESSAGE
        assert stored["live"]
