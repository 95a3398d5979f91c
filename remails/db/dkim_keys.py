"""DKIM keys beside a domain's signing RSA key: the next key of a rotation (pending until its
record is seen in DNS), Ed25519 keys (active beside RSA), and previous keys (retiring for a grace
period, then retired). The domains row holds the RSA key that signs now (remails.db.domains)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from remails.db.rows import Executor, transaction
from remails.errors import Conflict

__all__ = [
    "DkimKey",
    "NewKey",
    "due_rotations",
    "keys_of_domain",
    "pending_keys",
    "promote",
    "retire_overdue",
    "start_rotation",
]

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"


@dataclass(frozen=True)
class NewKey:
    selector: str
    algorithm: str
    private_sealed: bytes
    public_key: str

    def __repr__(self) -> str:
        return f"NewKey(selector={self.selector!r}, algorithm={self.algorithm!r})"


@dataclass(frozen=True)
class DkimKey:
    id: int
    domain_id: UUID
    domain: str
    selector: str
    algorithm: str
    public_key: str
    state: str
    changed_at: datetime


_KEY = "k.id, k.domain_id, d.name AS domain, k.selector, k.algorithm, k.public_key, k.state, k.changed_at"


async def start_rotation(pool: Executor, domain_id: UUID, keys: list[NewKey]) -> list[DkimKey]:
    """The next keys of a domain, pending; Conflict while a rotation is already under way."""
    async with transaction(pool) as conn:
        # The domain row serialises rotations of one domain.
        if await conn.fetchval("SELECT 1 FROM domains WHERE id = $1 FOR UPDATE", domain_id) is None:
            raise Conflict("no such domain", field="domain")
        if await conn.fetchval(
            "SELECT 1 FROM dkim_keys WHERE domain_id = $1 AND state = 'pending'", domain_id
        ):
            raise Conflict("a key rotation is already waiting for its DNS record", field="domain")
        await conn.executemany(
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_sealed, public_key, state)"
            " VALUES ($1, $2, $3, $4, $5, 'pending')",
            [(domain_id, k.selector, k.algorithm, k.private_sealed, k.public_key) for k in keys],
        )
        rows = await conn.fetch(
            f"SELECT {_KEY} FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
            " WHERE k.domain_id = $1 AND k.state = 'pending' ORDER BY k.id",
            domain_id,
        )
    return [DkimKey(**r) for r in rows]


async def keys_of_domain(pool: Executor, domain_id: UUID) -> list[DkimKey]:
    """Every key still published (not retired), oldest first."""
    rows = await pool.fetch(
        f"SELECT {_KEY} FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
        " WHERE k.domain_id = $1 AND k.state <> 'retired' ORDER BY k.id",
        domain_id,
    )
    return [DkimKey(**r) for r in rows]


async def pending_keys(pool: Executor, limit: int) -> list[DkimKey]:
    rows = await pool.fetch(
        f"SELECT {_KEY} FROM dkim_keys k JOIN domains d ON d.id = k.domain_id"
        " WHERE k.state = 'pending' ORDER BY k.changed_at LIMIT $1",
        limit,
    )
    return [DkimKey(**r) for r in rows]


async def promote(pool: Executor, key: DkimKey) -> bool:
    """A pending key seen in DNS starts signing; the key it replaces starts retiring. An RSA
    key moves into the domains row (whose previous key becomes a retiring row); an Ed25519 key
    becomes active. False when the key is no longer pending (another sweep did it)."""
    async with transaction(pool) as conn:
        pending = await conn.fetchrow(
            "SELECT private_sealed FROM dkim_keys WHERE id = $1 AND state = 'pending' FOR UPDATE", key.id
        )
        if pending is None:
            return False
        if key.algorithm == RSA:
            await conn.execute(
                "INSERT INTO dkim_keys (domain_id, selector, algorithm, private_sealed, public_key, state)"
                " SELECT id, dkim_selector, 'rsa-sha256', dkim_private_sealed, dkim_public_key, 'retiring'"
                " FROM domains WHERE id = $1",
                key.domain_id,
            )
            await conn.execute(
                "UPDATE domains SET dkim_selector = $2, dkim_private_sealed = $3, dkim_public_key = $4,"
                " dkim_key_since = now() WHERE id = $1",
                key.domain_id,
                key.selector,
                pending["private_sealed"],
                key.public_key,
            )
            await conn.execute("DELETE FROM dkim_keys WHERE id = $1", key.id)
        else:
            await conn.execute(
                "UPDATE dkim_keys SET state = 'retiring', changed_at = now()"
                " WHERE domain_id = $1 AND algorithm = $2 AND state = 'active'",
                key.domain_id,
                key.algorithm,
            )
            await conn.execute(
                "UPDATE dkim_keys SET state = 'active', changed_at = now() WHERE id = $1", key.id
            )
    return True


async def retire_overdue(pool: Executor, grace_seconds: float, limit: int) -> list[DkimKey]:
    """Keys retiring for longer than the grace period: retired, their private keys erased."""
    rows = await pool.fetch(
        "WITH due AS (SELECT id FROM dkim_keys WHERE state = 'retiring'"
        "  AND changed_at <= now() - make_interval(secs => $1) ORDER BY changed_at LIMIT $2)"
        " UPDATE dkim_keys k SET state = 'retired', private_sealed = NULL, changed_at = now()"
        f" FROM due, domains d WHERE k.id = due.id AND d.id = k.domain_id RETURNING {_KEY}",
        grace_seconds,
        limit,
    )
    return [DkimKey(**r) for r in rows]


async def due_rotations(pool: Executor, rotation_seconds: float, limit: int) -> list[tuple[UUID, str]]:
    """Verified domains whose signing RSA key is older than the rotation period, with no
    rotation under way: (id, name)."""
    rows = await pool.fetch(
        "SELECT d.id, d.name FROM domains d WHERE d.verified_at IS NOT NULL"
        " AND d.dkim_key_since <= now() - make_interval(secs => $1)"
        " AND NOT EXISTS (SELECT 1 FROM dkim_keys k WHERE k.domain_id = d.id AND k.state = 'pending')"
        " ORDER BY d.dkim_key_since LIMIT $2",
        rotation_seconds,
        limit,
    )
    return [(r["id"], r["name"]) for r in rows]
