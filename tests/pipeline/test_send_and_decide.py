"""The sender's statements and the decide step in fewer round trips: the claim answers the
return-path question and hands out what the decide step needs, the retry function decides a
batch of attempted messages with one statement, and a sender sharing retry's process decides
its own attempt with one statement. Real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from remails.attempt_decision import apply_decisions
from remails.config import Settings
from remails.context import Context
from remails.crypto import load_master_key
from remails.db import Pool, pipeline
from remails.db.pipeline import SenderFinish
from remails.events import DeliveryAttempted, EventType, make_event
from remails.outcomes import RetryPolicy
from remails.sending_domains import add_sending_domain
from remails_functions import retry
from tests.factories import Tenant, make_tenant, store_message
from tests.support.db import as_dict, one_row
from tests.support.recording import RecordingPublisher

NODE, IP = "node-a", "127.0.0.2"
POLICY = RetryPolicy(60, 3600)


async def _routed(pool: Pool, tenant: Tenant, recipients: list[str]) -> UUID:
    message_id = await store_message(pool, tenant, recipients)
    await pool.execute(
        "UPDATE messages SET status = 'routed', outbound_ip = $2::inet WHERE id = $1", message_id, IP
    )
    return message_id


def _reply(address: str, code: int, text: str) -> pipeline.AttemptRecord:
    return pipeline.AttemptRecord(
        "dest.test", [address], "mx.dest.test", IP, None, code, None, text, 5, {address: (code, None, text)}
    )


async def test_the_claim_names_the_return_path_domain_and_each_recipients_row(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    plain = await _routed(pool, tenant, ["a@dest.test"])
    claimed = await pipeline.claim_for_sending(pool, plain, IP, NODE, 30)
    assert claimed is not None and claimed.return_domain is None

    await pool.execute("UPDATE domains SET return_path_verified_at = now() WHERE name = 'acme.test'")
    verp = await _routed(pool, tenant, ["a@dest.test", "b@dest.test"])
    await pool.execute(
        "UPDATE recipients SET status = 'delivered' WHERE message_id = $1 AND address = 'b@dest.test'", verp
    )
    claimed = await pipeline.claim_for_sending(pool, verp, IP, NODE, 30)
    assert claimed is not None and claimed.return_domain == "acme.test"
    ids = await as_dict(pool, "SELECT address, id FROM recipients WHERE message_id = $1", verp)
    assert claimed.recipient_ids == {"a@dest.test": ids["a@dest.test"]}  # only those still to deliver
    assert claimed.recipients == [("a@dest.test", "dest.test")]
    assert await pipeline.claim_for_sending(pool, verp, IP, NODE, 30) is None  # claimed once


async def test_a_lease_is_its_claims_alone(pool: Pool, settings: Settings) -> None:
    """A task that outlived its lease (the sweep took the message back and the same node claimed
    it again) can no longer record, renew, finish or decide anything: each claim has a lease of
    its own. A restarting node still releases all of its leases."""
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await _routed(pool, tenant, ["a@dest.test"])
    old = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert old is not None
    # The lease ran out; the sweep routed it again and this node claimed it anew.
    await pool.execute("UPDATE messages SET status = 'routed', lease_owner = NULL WHERE id = $1", message_id)
    new = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert new is not None and (old.lease, new.lease) == (f"{NODE}#1", f"{NODE}#2")

    reply = _reply("a@dest.test", 250, "ok")
    assert not await pipeline.extend_lease(pool, message_id, old.lease, 60)
    assert not await pipeline.record_destination(pool, message_id, old.lease, reply, ["a@dest.test"])
    assert not await pipeline.finish_sending(pool, message_id, old.lease)
    rows = [
        pipeline.RecipientRow(
            old.recipient_ids["a@dest.test"], "a@dest.test", "dest.test", "pending", 250, None, "ok"
        )
    ]
    stale = pipeline.Attempted(old.key, "sending", old.attempts, old.expires_at, rows, old.created_at)
    assert await apply_decisions(pool, [stale], POLICY, [SenderFinish(old.lease, attempt=reply)]) == []
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE message_id = $1", message_id) == 0
    assert (
        await pool.fetchval("SELECT status::text FROM recipients WHERE message_id = $1", message_id)
        == "pending"
    )

    assert await pipeline.extend_lease(pool, message_id, new.lease, 60)  # the current claim's own
    other = await _routed(pool, tenant, ["b@dest.test"])
    assert await pipeline.claim_for_sending(pool, other, IP, f"{NODE}-2", 30) is not None
    released = await pipeline.release_node_leases(pool, NODE)
    assert [k.id for k in released] == [message_id]  # not the other node's, whose name starts alike


async def test_the_return_path_domain_is_read_as_the_signing_one(pool: Pool, settings: Settings) -> None:
    """The sender's own domain or its parent at a dot boundary, after the last @ (a quoted
    local part may hold one), and a name's characters taken literally (no LIKE wildcards)."""
    tenant = await make_tenant(pool, settings, "acme.test")
    await pool.execute("UPDATE domains SET return_path_verified_at = now() WHERE name = 'acme.test'")

    async def return_domain(sender: str) -> str | None:
        message_id = await _routed(pool, tenant, ["a@dest.test"])
        await pool.execute("UPDATE messages SET mail_from = $2 WHERE id = $1", message_id, sender)
        claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
        assert claimed is not None
        return claimed.return_domain

    assert await return_domain("app@acme.test") == "acme.test"
    assert await return_domain("app@News.ACME.test") == "acme.test"
    assert await return_domain('"x@acme.test"@elsewhere.test') is None  # its domain is the last one
    assert await return_domain('"x@elsewhere.test"@acme.test') == "acme.test"
    assert await return_domain("app@x-acme.test") is None  # not at a dot boundary
    await pool.execute("UPDATE domains SET name = 'ac_e.test' WHERE name = 'acme.test'")
    assert await return_domain("app@mail.acme.test") is None  # `_` is a character, not a wildcard
    assert await return_domain("app@mail.ac_e.test") == "ac_e.test"


async def test_retry_decides_a_batch_with_one_statement_and_skips_duplicates(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    ids = [await _routed(pool, tenant, [f"u{i}@dest.test"]) for i in range(3)]
    for i, message_id in enumerate(ids):
        claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
        assert claimed is not None and claimed.lease == f"{NODE}#1"
        code, text = (250, "ok") if i else (550, "5.1.1 unknown")
        delivered = [f"u{i}@dest.test"] if code == 250 else []
        await pipeline.record_destination(
            pool, message_id, claimed.lease, _reply(f"u{i}@dest.test", code, text), delivered
        )
        assert await pipeline.finish_sending(pool, message_id, claimed.lease)
    ctx = Context(
        settings, pool, RecordingPublisher(), load_master_key(settings.secret_key, settings.data_dir)
    )
    events = [
        make_event(
            EventType.DELIVERY_ATTEMPTED,
            DeliveryAttempted(message_id=m, organization_id=tenant.org_id, project_id=tenant.project_id),
        )
        for m in ids
    ]

    replies = await retry.handle_attempted_batch(ctx, [*events, events[0]])

    assert sorted((e["type"], e["msgid"]) for e in replies) == sorted(
        [
            ("message.bounced", str(ids[0])),
            ("message.delivered", str(ids[1])),
            ("message.delivered", str(ids[2])),
        ]
    )
    statuses = await as_dict(pool, "SELECT id, status::text FROM messages WHERE id = ANY($1::uuid[])", ids)
    assert statuses == {ids[0]: "bounced", ids[1]: "delivered", ids[2]: "delivered"}
    assert (
        await pool.fetchval("SELECT count(*) FROM suppressions WHERE organization_id = $1", tenant.org_id)
        == 1
    )
    assert await retry.handle_attempted_batch(ctx, events) == []  # duplicates: nothing moves twice
    # Decided before another decision won (a race): the statement's guard refuses it.
    stale = pipeline.Outcome(ids[1], "deferred", "1 deferred", datetime.now(UTC), {}, [])
    assert await pipeline.apply_outcomes(pool, [stale]) == {}
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", ids[1]) == "delivered"


async def test_the_sender_decides_its_own_attempt_from_the_claim_and_its_replies(
    pool: Pool, settings: Settings
) -> None:
    """sending → the outcome in one statement, only under the deciding node's lease, counting the
    recipients settled by an earlier attempt (which the claim does not hand out again)."""
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await _routed(pool, tenant, ["a@dest.test", "b@dest.test"])
    await pool.execute(
        "UPDATE recipients SET status = 'delivered' WHERE message_id = $1 AND address = 'b@dest.test'",
        message_id,
    )
    claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert claimed is not None
    assert (claimed.attempts, claimed.settled) == (1, ["delivered"])
    assert claimed.expires_at > claimed.created_at
    bounce = _reply("a@dest.test", 550, "5.1.1 unknown")
    assert await pipeline.record_destination(pool, message_id, claimed.lease, bounce, [])
    rows = [
        pipeline.RecipientRow(
            claimed.recipient_ids["a@dest.test"],
            "a@dest.test",
            "dest.test",
            "pending",
            550,
            None,
            "5.1.1 unknown",
        )
    ]
    attempted = pipeline.Attempted(
        claimed.key,
        "sending",
        claimed.attempts,
        claimed.expires_at,
        rows,
        claimed.created_at,
        tuple(claimed.settled),
    )

    assert await apply_decisions(pool, [attempted], POLICY, [SenderFinish("node-b#1")]) == []  # not its lease
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", message_id) == "sending"
    assert await apply_decisions(pool, [attempted], POLICY) == []  # the retry function's form: not attempted

    events = await apply_decisions(pool, [attempted], POLICY, [SenderFinish(claimed.lease)])
    assert [(e["type"], e["msgid"]) for e in events] == [("message.bounced", str(message_id))]
    row = await one_row(
        pool,
        "SELECT status::text, lease_owner, lease_until, finished_at FROM messages WHERE id = $1",
        message_id,
    )
    assert (row["status"], row["lease_owner"], row["lease_until"]) == ("bounced", None, None)
    assert row["finished_at"] is not None
    recipients = await as_dict(
        pool, "SELECT address, status::text FROM recipients WHERE message_id = $1", message_id
    )
    assert recipients == {"a@dest.test": "bounced", "b@dest.test": "delivered"}
    assert await pool.fetchval(
        "SELECT address FROM suppressions WHERE organization_id = $1", tenant.org_id
    ) == ("a@dest.test")
    assert (
        await apply_decisions(pool, [attempted], POLICY, [SenderFinish(claimed.lease)]) == []
    )  # decided once


async def test_a_deferred_recipient_beside_a_settled_one_defers_the_message(
    pool: Pool, settings: Settings
) -> None:
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await _routed(pool, tenant, ["a@dest.test", "b@dest.test"])
    await pool.execute(
        "UPDATE recipients SET status = 'delivered' WHERE message_id = $1 AND address = 'b@dest.test'",
        message_id,
    )
    claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert claimed is not None
    rows = [
        pipeline.RecipientRow(
            claimed.recipient_ids["a@dest.test"], "a@dest.test", "dest.test", "pending", 451, None, "busy"
        )
    ]
    attempted = pipeline.Attempted(
        claimed.key, "sending", 1, claimed.expires_at, rows, claimed.created_at, tuple(claimed.settled)
    )
    (event,) = await apply_decisions(pool, [attempted], POLICY, [SenderFinish(claimed.lease)])
    assert event["type"] == "message.deferred"
    row = await one_row(
        pool, "SELECT status::text, next_attempt_at, lease_owner FROM messages WHERE id = $1", message_id
    )
    assert row["status"] == "deferred" and row["next_attempt_at"] is not None and row["lease_owner"] is None


async def test_the_deciding_statement_also_stores_the_last_destinations_attempt(
    pool: Pool, settings: Settings
) -> None:
    """One transaction: its attempt row and each recipient's reply are written by the decision's
    own statement, exactly as record_destination would have written them — and not when the
    lease is another node's."""
    tenant = await make_tenant(pool, settings, "acme.test")
    message_id = await _routed(pool, tenant, ["a@dest.test"])
    claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
    assert claimed is not None
    attempt = _reply("a@dest.test", 250, "2.0.0 queued as 1A2B")
    rows = [
        pipeline.RecipientRow(
            claimed.recipient_ids["a@dest.test"],
            "a@dest.test",
            "dest.test",
            "pending",
            250,
            None,
            "2.0.0 queued as 1A2B",
        )
    ]
    attempted = pipeline.Attempted(claimed.key, "sending", 1, claimed.expires_at, rows, claimed.created_at)

    assert await apply_decisions(pool, [attempted], POLICY, [SenderFinish("node-b#1", attempt=attempt)]) == []
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE message_id = $1", message_id) == 0

    (event,) = await apply_decisions(
        pool, [attempted], POLICY, [SenderFinish(claimed.lease, attempt=attempt)]
    )
    assert event["type"] == "message.delivered"
    stored = await one_row(
        pool,
        "SELECT domain, recipients, mx_host, host(source_ip) AS ip, code, text, duration_ms FROM attempts"
        " WHERE message_id = $1",
        message_id,
    )
    assert dict(stored) == {
        "domain": "dest.test",
        "recipients": ["a@dest.test"],
        "mx_host": "mx.dest.test",
        "ip": IP,
        "code": 250,
        "text": "2.0.0 queued as 1A2B",
        "duration_ms": 5,
    }
    recipient = await one_row(
        pool,
        "SELECT status::text, last_code, last_text, attempts, delivered_at FROM recipients"
        " WHERE message_id = $1",
        message_id,
    )
    assert (recipient["status"], recipient["last_code"], recipient["last_text"], recipient["attempts"]) == (
        "delivered",
        250,
        "2.0.0 queued as 1A2B",
        1,
    )
    assert recipient["delivered_at"] is not None


async def test_one_statement_decides_several_senders_attempts_each_under_its_own_lease(
    pool: Pool, settings: Settings
) -> None:
    """Attempts that end together are decided together: each message moves only under its own
    lease (one whose lease was lost stays put, the others still move), and each stores its own
    attempt and replies — also when two messages have the same recipient address."""
    tenant = await make_tenant(pool, settings, "acme.test")
    replies = [(250, "2.0.0 one"), (550, "5.1.1 two unknown"), (250, "2.0.0 three")]
    claims = []
    for _ in replies:
        claimed = await pipeline.claim_for_sending(
            pool, await _routed(pool, tenant, ["a@dest.test"]), IP, NODE, 30
        )
        assert claimed is not None
        claims.append(claimed)
    messages, finishes = [], []
    for claimed, (code, text) in zip(claims, replies, strict=True):
        row = pipeline.RecipientRow(
            claimed.recipient_ids["a@dest.test"], "a@dest.test", "dest.test", "pending", code, None, text
        )
        messages.append(
            pipeline.Attempted(claimed.key, "sending", 1, claimed.expires_at, [row], claimed.created_at)
        )
        finishes.append(SenderFinish(claimed.lease, attempt=_reply("a@dest.test", code, text)))
    lost = claims[2].key.id  # its lease went to another claim meanwhile
    await pool.execute("UPDATE messages SET lease_owner = 'node-b#1' WHERE id = $1", lost)

    events = await apply_decisions(pool, messages, POLICY, finishes)

    assert sorted((e["msgid"], e["type"]) for e in events) == sorted(
        [(str(claims[0].key.id), "message.delivered"), (str(claims[1].key.id), "message.bounced")]
    )
    for claimed, (code, text) in zip(claims[:2], replies[:2], strict=True):
        recipient = await one_row(
            pool,
            "SELECT last_code, last_text, attempts FROM recipients WHERE message_id = $1",
            claimed.key.id,
        )
        assert tuple(recipient) == (code, text, 1)
        attempt = await one_row(pool, "SELECT code, text FROM attempts WHERE message_id = $1", claimed.key.id)
        assert tuple(attempt) == (code, text)
    held = await one_row(pool, "SELECT status::text, lease_owner FROM messages WHERE id = $1", lost)
    assert tuple(held) == ("sending", "node-b#1")
    assert await pool.fetchval("SELECT count(*) FROM attempts WHERE message_id = $1", lost) == 0
    assert await pool.fetchval("SELECT attempts FROM recipients WHERE message_id = $1", lost) == 0


async def test_the_claim_reads_the_signing_keys_of_the_senders_most_specific_own_domain(
    pool: Pool, settings: Settings
) -> None:
    """The keys come with the claim: the organization's own domain that is the sender's domain
    or its nearest parent (never a bare top-level name, never another organization's), RSA key
    first, then its active keys by selector."""
    master_key = load_master_key(settings.secret_key, settings.data_dir)
    tenant = await make_tenant(pool, settings, "acme.test")
    await add_sending_domain(pool, master_key, tenant.org_id, [tenant.project_id], "mail.acme.test")
    # A bare top-level name cannot be added; a row of one (say, from an old version) signs nothing.
    await pool.execute(
        "INSERT INTO domains SELECT (jsonb_populate_record(NULL::domains, to_jsonb(d)"
        " || jsonb_build_object('id', gen_random_uuid(), 'name', 'test'))).*"
        " FROM domains d WHERE d.name = 'acme.test'"
    )
    other = await make_tenant(pool, settings, "other.test")
    domain_id = await pool.fetchval("SELECT id FROM domains WHERE name = 'mail.acme.test'")
    await pool.execute(
        "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_sealed, public_key, state)"
        " VALUES ($1, 'ed1', 'ed25519-sha256', '\\x01', 'pub', 'active'),"
        "        ($1, 'ed0', 'ed25519-sha256', '\\x02', 'pub', 'pending')",
        domain_id,
    )

    async def keys_for(sender: str, org: UUID) -> tuple[str | None, list[str]]:
        message_id = await _routed(pool, tenant, ["a@dest.test"])
        await pool.execute(
            "UPDATE messages SET mail_from = $2, organization_id = $3 WHERE id = $1", message_id, sender, org
        )
        claimed = await pipeline.claim_for_sending(pool, message_id, IP, NODE, 30)
        assert claimed is not None
        return claimed.dkim_domain, [selector for selector, _ in claimed.dkim_keys]

    rsa = await pool.fetchval("SELECT dkim_selector FROM domains WHERE name = 'mail.acme.test'")
    assert await keys_for("app@news.mail.acme.test", tenant.org_id) == ("mail.acme.test", [rsa, "ed1"])
    assert (await keys_for("app@mail.acme.test", tenant.org_id))[0] == "mail.acme.test"
    assert (await keys_for("App@ACME.test", tenant.org_id))[0] == "acme.test"
    assert await keys_for("app@x-acme.test", tenant.org_id) == (None, [])  # a dot boundary
    assert await keys_for("app@elsewhere.test", tenant.org_id) == (None, [])  # not the bare "test"
    assert await keys_for("app@other.test", tenant.org_id) == (None, [])  # another organization's
    assert (await keys_for("app@other.test", other.org_id))[0] == "other.test"


async def test_one_statement_claims_a_batch_and_leaves_the_rest_alone(pool: Pool, settings: Settings) -> None:
    """A batch claim takes exactly the messages routed to this IP (a duplicate id once), holds a
    blocked organization's message, and leaves messages of other IPs or already claimed ones."""
    tenant = await make_tenant(pool, settings, "acme.test")
    blocked = await make_tenant(pool, settings, "blocked.test")
    mine = [await _routed(pool, tenant, [f"u{i}@dest.test"]) for i in range(3)]
    other_ip = await _routed(pool, tenant, ["x@dest.test"])
    await pool.execute("UPDATE messages SET outbound_ip = '127.0.0.9' WHERE id = $1", other_ip)
    taken = await _routed(pool, tenant, ["y@dest.test"])
    assert await pipeline.claim_for_sending(pool, taken, IP, "node-b", 30) is not None
    held = await _routed(pool, blocked, ["z@dest.test"])
    await pool.execute("UPDATE organizations SET block_status = 'no_sending' WHERE id = $1", blocked.org_id)

    claimed = await pipeline.claim_many_for_sending(
        pool, [*mine, mine[0], other_ip, taken, held], IP, NODE, 30
    )

    assert sorted(c.key.id for c in claimed) == sorted(mine)
    assert all(c.recipients == [(f"u{mine.index(c.key.id)}@dest.test", "dest.test")] for c in claimed)
    assert all(c.dkim_domain == "acme.test" and c.dkim_keys for c in claimed)
    statuses = await as_dict(
        pool,
        "SELECT id, status::text || ' ' || coalesce(lease_owner, '-') FROM messages WHERE id = ANY($1)",
        [*mine, other_ip, taken, held],
    )
    assert statuses == {
        **{m: f"sending {NODE}#1" for m in mine},
        other_ip: "routed -",
        taken: "sending node-b#1",
        held: "held -",
    }
