"""The egress side: IP pools, outbound IPs (egress sources) and the sender nodes holding them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required, transaction
from remails.errors import Conflict

__all__ = [
    "EgressRoute",
    "IpPool",
    "create_ip_pool",
    "get_ip_pool",
    "get_ip_pool_by_name",
    "heartbeat",
    "list_ip_pools",
    "live_pool_ips",
    "live_routes",
    "register_node",
]


@dataclass(frozen=True)
class IpPool:
    id: UUID
    name: str
    ips: list[str]
    created_at: datetime


async def create_ip_pool(pool: Executor, name: str, ips: list[str]) -> IpPool:
    """A dedicated pool; its IPs leave the shared pool. Conflict when the name is taken."""
    async with transaction(pool) as conn:
        try:
            row = required(
                await conn.fetchrow(
                    "INSERT INTO ip_pools (name) VALUES ($1) RETURNING id, name, created_at", name
                )
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("an IP pool with this name exists", field="name") from None
        await conn.executemany(
            "INSERT INTO outbound_ips (ip, pool_id) VALUES ($1::inet, $2)"
            " ON CONFLICT (ip) DO UPDATE SET pool_id = EXCLUDED.pool_id",
            [(ip, row["id"]) for ip in ips],
        )
    return IpPool(row["id"], row["name"], list(ips), row["created_at"])


async def get_ip_pool_by_name(pool: asyncpg.Pool, name: str) -> IpPool | None:
    row = await pool.fetchrow(
        "SELECT p.id, p.name, p.created_at,"
        " COALESCE(array_agg(host(o.ip) ORDER BY o.ip) FILTER (WHERE o.ip IS NOT NULL), '{}')"
        " AS ips"
        " FROM ip_pools p LEFT JOIN outbound_ips o ON o.pool_id = p.id"
        " WHERE p.name = $1 GROUP BY p.id",
        name,
    )
    return IpPool(row["id"], row["name"], list(row["ips"]), row["created_at"]) if row else None


async def register_node(pool: asyncpg.Pool, node_name: str, ips: list[str], url: str | None = None) -> None:
    """A sender node announces itself, the IPs it can bind, and where it takes events."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO sender_nodes (name, url) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET heartbeat_at = now(), started_at = now(), url = EXCLUDED.url",
            node_name,
            url,
        )
        await conn.executemany(
            "INSERT INTO outbound_ips (ip, node_name) VALUES ($1::inet, $2)"
            " ON CONFLICT (ip) DO UPDATE SET node_name = EXCLUDED.node_name",
            [(ip, node_name) for ip in ips],
        )


async def heartbeat(pool: Executor, node_name: str, ips: list[str], stale_seconds: float) -> None:
    """The node is alive; it lets go of the IPs it no longer holds (a floating IP moved to
    another node) and takes over its IPs from a holder that stopped beating (a node that died,
    or another worker of the same host)."""
    await pool.execute(
        "WITH beat AS (UPDATE sender_nodes SET heartbeat_at = now() WHERE name = $1),"
        " released AS (UPDATE outbound_ips SET node_name = NULL"
        "  WHERE node_name = $1 AND NOT (ip = ANY($2::inet[]))),"
        " added AS (INSERT INTO outbound_ips (ip, node_name) SELECT unnest($2::inet[]), $1"
        "  ON CONFLICT (ip) DO NOTHING)"
        " UPDATE outbound_ips o SET node_name = $1 WHERE o.ip = ANY($2::inet[])"
        " AND o.node_name IS DISTINCT FROM $1 AND NOT EXISTS (SELECT 1 FROM sender_nodes n"
        " WHERE n.name = o.node_name AND n.heartbeat_at > now() - make_interval(secs => $3))",
        node_name,
        ips,
        stale_seconds,
    )


async def list_ip_pools(pool: asyncpg.Pool) -> list[IpPool]:
    rows = await pool.fetch(
        "SELECT p.id, p.name, p.created_at,"
        " COALESCE(array_agg(host(o.ip) ORDER BY o.ip) FILTER (WHERE o.ip IS NOT NULL), '{}') AS ips"
        " FROM ip_pools p LEFT JOIN outbound_ips o ON o.pool_id = p.id GROUP BY p.id ORDER BY p.name"
    )
    return [IpPool(r["id"], r["name"], list(r["ips"]), r["created_at"]) for r in rows]


async def get_ip_pool(pool: asyncpg.Pool, pool_id: UUID) -> IpPool | None:
    return next((p for p in await list_ip_pools(pool) if p.id == pool_id), None)


@dataclass(frozen=True)
class EgressRoute:
    """An outbound IP and the sender node (with its event URL) holding it."""

    ip: str
    node_name: str
    url: str


async def live_routes(pool: Executor, fresh_seconds: float) -> list[EgressRoute]:
    rows = await pool.fetch(
        "SELECT host(o.ip) AS ip, n.name AS node_name, n.url FROM outbound_ips o"
        " JOIN sender_nodes n ON n.name = o.node_name"
        " WHERE n.url IS NOT NULL AND n.heartbeat_at > now() - make_interval(secs => $1) ORDER BY o.ip",
        fresh_seconds,
    )
    return [EgressRoute(**r) for r in rows]


async def live_pool_ips(pool: Executor, ip_pool_id: UUID | None, fresh_seconds: float) -> list[str]:
    """The IPs of a dedicated pool (None: the shared pool) that a sender node seen within
    `fresh_seconds` holds: where such an organization's mail can leave from now."""
    rows = await pool.fetch(
        "SELECT host(o.ip) AS ip FROM outbound_ips o JOIN sender_nodes n ON n.name = o.node_name"
        " WHERE n.heartbeat_at > now() - make_interval(secs => $2) AND o.pool_id IS NOT DISTINCT FROM $1"
        " ORDER BY o.ip",
        ip_pool_id,
        fresh_seconds,
    )
    return [r["ip"] for r in rows]
