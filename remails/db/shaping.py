"""Shaping state shared by every sender process using an egress IP: connection slots held per
(source IP, site) with an expiry, and each (source IP, site)'s rate, suspension and
deliveries taken in the current window. The decisions are the sender's (pure functions
passed in); this module only stores, under a row lock where a decision reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from remails.db.rows import Executor, required, transaction

_T = TypeVar("_T")

__all__ = [
    "SiteState",
    "acquire_slot",
    "release_node_slots",
    "release_slot",
    "renew_slots",
    "suspensions",
    "update_site",
    "want_slot",
    "wanted",
]


# The lowest free slot number below the limit, taken in one statement. A slot whose holder
# stopped renewing it (a crashed process) is free once it expired. Two processes racing for
# the same number: one wins, the other gets no row and tries again.
_ACQUIRE = """
WITH free AS (
    SELECT n FROM generate_series(0, $3 - 1) AS n
     WHERE NOT EXISTS (SELECT 1 FROM shaping_slots s
                        WHERE s.source_ip = $1::inet AND s.site = $2 AND s.slot = n
                          AND s.expires_at > now())
     ORDER BY n LIMIT 1
)
INSERT INTO shaping_slots (source_ip, site, slot, node_name, token, expires_at)
SELECT $1::inet, $2, n, $4, $5, now() + make_interval(secs => $6) FROM free
ON CONFLICT (source_ip, site, slot) DO UPDATE
   SET node_name = EXCLUDED.node_name, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at
 WHERE shaping_slots.expires_at <= now()
RETURNING slot
"""


async def acquire_slot(
    conn: Executor,
    source_ip: str,
    site: str,
    max_connections: int,
    node: str,
    token: UUID,
    seconds: float,
    tries: int = 3,
) -> int | None:
    """A connection slot for (source IP, site), or None when all `max_connections` are held."""
    for _ in range(tries):
        slot = await conn.fetchval(_ACQUIRE, source_ip, site, max_connections, node, token, seconds)
        if slot is not None:
            return int(slot)
        held = await conn.fetchval(
            "SELECT count(*) FROM shaping_slots WHERE source_ip = $1::inet AND site = $2"
            " AND slot < $3 AND expires_at > now()",
            source_ip,
            site,
            max_connections,
        )
        if held >= max_connections:
            return None  # truly full, not a lost race
    return None


async def release_slot(conn: Executor, source_ip: str, site: str, slot: int, token: UUID) -> None:
    await conn.execute(
        "DELETE FROM shaping_slots WHERE source_ip = $1::inet AND site = $2 AND slot = $3 AND token = $4",
        source_ip,
        site,
        slot,
        token,
    )


async def renew_slots(conn: Executor, node: str, seconds: float) -> int:
    """Extend every slot this node holds (its heartbeat); how many it holds."""
    result = await conn.execute(
        "UPDATE shaping_slots SET expires_at = now() + make_interval(secs => $2) WHERE node_name = $1",
        node,
        seconds,
    )
    return int(result.rsplit(" ", 1)[1])


async def release_node_slots(conn: Executor, node: str) -> None:
    """A node that (re)starts holds no connections."""
    await conn.execute("DELETE FROM shaping_slots WHERE node_name = $1", node)


async def want_slot(
    conn: Executor, source_ip: str, site: str, holding: int = 0, seconds: float = 2.0
) -> None:
    """Say that a process holding `holding` slots of (source IP, site) waits for one that others
    hold: processes holding idle connections to the site close them, and busy ones holding
    more than `holding` + 1 give one back (`wanted`). The fewest held among the waiting counts."""
    await conn.execute(
        "INSERT INTO shaping_sites (source_ip, site, wanted_until, wanted_holding)"
        " VALUES ($1::inet, $2, now() + make_interval(secs => $3), $4)"
        " ON CONFLICT (source_ip, site) DO UPDATE SET wanted_until = EXCLUDED.wanted_until,"
        " wanted_holding = CASE WHEN shaping_sites.wanted_until > now()"
        " THEN least(shaping_sites.wanted_holding, EXCLUDED.wanted_holding)"
        " ELSE EXCLUDED.wanted_holding END",
        source_ip,
        site,
        seconds,
        holding,
    )


async def wanted(conn: Executor, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Which of these (source IP, site) pairs a process is waiting for a slot of, each with the
    fewest slots a waiting process holds."""
    rows = await conn.fetch(
        "SELECT host(s.source_ip) AS ip, s.site, COALESCE(s.wanted_holding, 0) AS holding"
        " FROM shaping_sites s"
        " JOIN unnest($1::inet[], $2::text[]) AS p(ip, site) ON p.ip = s.source_ip AND p.site = s.site"
        " WHERE s.wanted_until > now()",
        [ip for ip, _ in pairs],
        [site for _, site in pairs],
    )
    return {(r["ip"], r["site"]): r["holding"] for r in rows}


@dataclass(frozen=True)
class SiteState:
    """One (source IP, site)'s row; times in epoch seconds of the database's clock."""

    now: float
    rate_factor: float = 1.0
    rate_changed_at: float = 0.0
    suspended_until: float = 0.0
    window_start: float = 0.0
    taken: int = 0


_NEW_SITE = "INSERT INTO shaping_sites (source_ip, site) VALUES ($1::inet, $2) ON CONFLICT DO NOTHING"

_READ_SITE = """
SELECT extract(epoch FROM now())::float8 AS now, rate_factor,
       extract(epoch FROM rate_changed_at)::float8 AS rate_changed_at,
       COALESCE(extract(epoch FROM suspended_until)::float8, 0) AS suspended_until,
       COALESCE(extract(epoch FROM window_start)::float8, 0) AS window_start, taken
  FROM shaping_sites WHERE source_ip = $1::inet AND site = $2 FOR UPDATE
"""

_WRITE_SITE = """
UPDATE shaping_sites
   SET rate_factor = $3::float8, rate_changed_at = to_timestamp($4::float8),
       suspended_until = to_timestamp(NULLIF($5::float8, 0)),
       window_start = to_timestamp(NULLIF($6::float8, 0)), taken = $7, updated_at = now(),
       throttled = throttled + CASE WHEN $8::text IS NULL THEN 0 ELSE 1 END,
       last_throttle = COALESCE($8, last_throttle)
 WHERE source_ip = $1::inet AND site = $2
"""


async def update_site(
    pool: Executor,
    source_ip: str,
    site: str,
    decide: Callable[[SiteState], tuple[SiteState, _T]],
    throttle_note: str | None = None,
) -> _T:
    """Read the (source IP, site) row under its lock, let `decide` compute the new row, write
    it; returns what `decide` returned beside it. `throttle_note` counts a throttling reply."""
    async with transaction(pool) as conn:
        row = await conn.fetchrow(_READ_SITE, source_ip, site)
        if row is None:  # the first time this (IP, site) is used anywhere
            await conn.execute(_NEW_SITE, source_ip, site)
            row = required(await conn.fetchrow(_READ_SITE, source_ip, site))
        new, result = decide(SiteState(**row))
        await conn.execute(
            _WRITE_SITE,
            source_ip,
            site,
            new.rate_factor,
            new.rate_changed_at,
            new.suspended_until,
            new.window_start,
            new.taken,
            throttle_note[:300] if throttle_note else None,
        )
    return result


async def suspensions(conn: Executor, source_ips: list[str]) -> dict[tuple[str, str], float]:
    """The (source IP, site) pairs of these IPs suspended now, with the end in epoch seconds."""
    rows = await conn.fetch(
        "SELECT host(source_ip) AS ip, site, extract(epoch FROM suspended_until)::float8 AS until"
        " FROM shaping_sites WHERE source_ip = ANY($1::inet[]) AND suspended_until > now()",
        source_ips,
    )
    return {(r["ip"], r["site"]): float(r["until"]) for r in rows}
