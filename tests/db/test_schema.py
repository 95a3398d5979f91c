"""The schema against a real PostgreSQL: migrations, enums, secrets at rest, guarded transitions."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from remails.config import Settings
from remails.crypto import MasterKey, load_master_key
from remails.db import Pool, credentials, messages
from remails.db.migrate import available_migrations, migrate
from remails.db.pipeline import advance
from remails.types import ApiRole, BlockStatus, MessageStatus, RecipientStatus, literal_values
from tests.factories import make_tenant, store_message
from tests.support.db import as_dict


async def _schema_snapshot(pool: Pool) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    return [tuple(r) for r in rows]


async def test_migrations_apply_twice_without_change(pool: Pool) -> None:
    before = await _schema_snapshot(pool)
    assert await migrate(pool) == []
    assert await migrate(pool) == []
    assert await _schema_snapshot(pool) == before
    recorded = await pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in recorded] == [v for v, _ in available_migrations()]


@pytest.mark.parametrize(
    ("enum", "literal"),
    [
        ("message_status", MessageStatus),
        ("recipient_status", RecipientStatus),
        ("api_role", ApiRole),
        ("block_status", BlockStatus),
    ],
)
async def test_sql_enums_match_python_vocabulary(pool: Pool, enum: str, literal: object) -> None:
    values = await pool.fetchval(f"SELECT enum_range(NULL::{enum})::text[]")
    assert tuple(values) == literal_values(literal)


async def test_secrets_are_stored_only_as_digests(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings)
    _, token = await credentials.create_api_key(pool, tenant.org_id, "admin")
    secret = token.partition(".")[2]
    dump = await pool.fetchval(
        "SELECT string_agg(t::text, '|') FROM (SELECT * FROM smtp_credentials) t"
    ) + await pool.fetchval("SELECT string_agg(t::text, '|') FROM (SELECT * FROM api_keys) t")
    for plain in (tenant.password, secret, token):
        assert plain not in dump
        assert base64.b64encode(plain.encode()).decode() not in dump
    assert await credentials.authenticate_smtp(pool, tenant.username, tenant.password) is not None
    assert await credentials.authenticate_smtp(pool, tenant.username, tenant.password + "x") is None
    assert await credentials.authenticate_smtp(pool, "nobody", tenant.password) is None
    assert await credentials.authenticate_api_key(pool, token) is not None
    assert await credentials.authenticate_api_key(pool, token[:-1]) is None


async def test_dkim_private_key_needs_the_master_key(pool: Pool, settings: Settings, tmp_path: Path) -> None:
    tenant = await make_tenant(pool, settings)
    sealed = await pool.fetchval("SELECT dkim_private_sealed FROM domains WHERE name = $1", tenant.domain)
    assert b"PRIVATE KEY" not in sealed
    own = load_master_key(settings.secret_key, settings.data_dir)
    assert own.open(sealed, context=tenant.domain).startswith(b"-----BEGIN PRIVATE KEY-----")
    other = load_master_key(None, tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="cannot decrypt"):
        other.open(sealed, context=tenant.domain)
    with pytest.raises(ValueError, match="cannot decrypt"):
        own.open(sealed, context="other.test")  # bound to its domain
    assert (settings.data_dir / "master.key").stat().st_mode & 0o777 == 0o600


def test_master_key_from_setting_must_be_32_bytes(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    assert isinstance(load_master_key(key, tmp_path), MasterKey)
    from remails.config import ConfigError

    with pytest.raises(ConfigError, match="REMAILS_SECRET_KEY"):
        load_master_key("c2hvcnQ=", tmp_path)


async def test_message_and_recipients_are_stored_together(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings)
    message_id = await store_message(pool, tenant, ["a@dest.test", "b@Other.test", "a@dest.test"])
    detail = await messages.get_message_detail(pool, message_id)
    assert detail is not None
    assert detail["status"] == "received"
    assert [(r["address"], r["status"]) for r in detail["recipients"]] == [
        ("a@dest.test", "pending"),
        ("b@Other.test", "pending"),
    ]
    domains = await pool.fetch("SELECT domain FROM recipients WHERE message_id = $1 ORDER BY id", message_id)
    assert [d["domain"] for d in domains] == ["dest.test", "other.test"]


async def test_a_duplicate_transition_does_not_move_a_message_twice(pool: Pool, settings: Settings) -> None:
    tenant = await make_tenant(pool, settings)
    message_id = await store_message(pool, tenant, ["a@dest.test"])
    assert await advance(pool, message_id, ["received"], "validated")
    assert not await advance(pool, message_id, ["received"], "validated")
    assert await pool.fetchval("SELECT status FROM messages WHERE id = $1", message_id) == "validated"


async def test_bodies_past_the_projects_retention_are_purged(pool: Pool, settings: Settings) -> None:
    from remails.db.retention import purge_bodies

    tenant = await make_tenant(pool, settings)
    old = await store_message(pool, tenant, ["a@dest.test"])
    recent = await store_message(pool, tenant, ["b@dest.test"])
    waiting = await store_message(pool, tenant, ["c@dest.test"])
    await pool.execute("UPDATE projects SET retention_days = 30 WHERE id = $1", tenant.project_id)
    await pool.execute(
        "UPDATE messages SET status = 'delivered', finished_at = now() - interval '40 days' WHERE id = $1",
        old,
    )
    await pool.execute(
        "UPDATE messages SET status = 'delivered', finished_at = now() - interval '10 days' WHERE id = $1",
        recent,
    )
    await pool.execute("UPDATE messages SET created_at = now() - interval '40 days' WHERE id = $1", waiting)
    assert await purge_bodies(pool, 100) == 1
    sizes = await as_dict(pool, "SELECT id, octet_length(raw) FROM messages")
    assert sizes[old] == 0 and sizes[recent] > 0 and sizes[waiting] > 0
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", old) == "delivered"
    assert await purge_bodies(pool, 100) == 0


async def test_routing_sees_only_ips_of_live_nodes_and_the_orgs_own_pool(
    pool: Pool, settings: Settings
) -> None:
    from remails.db import egress, orgs
    from remails.db.pipeline import load_to_route

    tenant = await make_tenant(pool, settings)
    message_id = await store_message(pool, tenant, ["a@dest.test"])
    await egress.register_node(pool, "live", ["127.0.0.2", "127.0.0.3"])
    await egress.register_node(pool, "dead", ["127.0.0.4"])
    await pool.execute("UPDATE sender_nodes SET heartbeat_at = now() - interval '1 hour' WHERE name = 'dead'")
    routable = await load_to_route(pool, message_id, fresh_seconds=30)
    assert routable is not None and routable.live_ips == ["127.0.0.2", "127.0.0.3"]  # shared pool, live only

    dedicated = await egress.create_ip_pool(pool, "dedicated", ["127.0.0.3"])
    await orgs.set_ip_pool(pool, tenant.org_id, dedicated.id)
    routable = await load_to_route(pool, message_id, fresh_seconds=30)
    assert routable is not None and routable.live_ips == ["127.0.0.3"]  # its own pool only

    other = await make_tenant(pool, settings, "other.test")
    other_message = await store_message(pool, other, ["b@dest.test"])
    routable = await load_to_route(pool, other_message, fresh_seconds=30)
    assert routable is not None and routable.live_ips == ["127.0.0.2"]  # dedicated IPs leave the shared pool

    # A live node takes over an IP whose holder stopped beating.
    await egress.heartbeat(pool, "live", ["127.0.0.2", "127.0.0.3", "127.0.0.4"], stale_seconds=30)
    assert await pool.fetchval("SELECT node_name FROM outbound_ips WHERE ip = '127.0.0.4'") == "live"

    # A floating IP moved from one live node to another: the old holder lets go, the new takes it.
    await egress.register_node(pool, "new", [])
    await egress.heartbeat(pool, "new", ["127.0.0.4"], stale_seconds=30)
    assert await pool.fetchval("SELECT node_name FROM outbound_ips WHERE ip = '127.0.0.4'") == "live"
    await egress.heartbeat(pool, "live", ["127.0.0.2", "127.0.0.3"], stale_seconds=30)
    assert await pool.fetchval("SELECT node_name FROM outbound_ips WHERE ip = '127.0.0.4'") is None
    await egress.heartbeat(pool, "new", ["127.0.0.4", "127.0.0.5"], stale_seconds=30)
    assert await pool.fetchval("SELECT node_name FROM outbound_ips WHERE ip = '127.0.0.4'") == "new"
    # an IP attached to a node after it started is registered by its next beat
    assert await pool.fetchval("SELECT node_name FROM outbound_ips WHERE ip = '127.0.0.5'") == "new"
