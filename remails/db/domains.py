"""Sending domains: their DKIM keys (sealed), projects and verification state.

A domain row is an organization's claim on a name. Claims are free — several organizations
may hold an unverified one — but at most one per name is verified (a partial unique index),
so the first to prove control owns it and the others get DomainTaken.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required, transaction
from remails.errors import Conflict, DomainTaken

__all__ = [
    "DkimSigningKey",
    "Domain",
    "add_domain",
    "get_domain_by_name",
    "record_verification",
    "signing_key",
    "verified_domains_of_project",
]


@dataclass(frozen=True)
class Domain:
    id: UUID
    organization_id: UUID
    name: str
    dkim_selector: str
    dkim_public_key: str
    verified_at: datetime | None
    verification: dict[str, Any] | None
    created_at: datetime
    status: str = "pending"  # pending | verified | invalid (records no longer match at a re-check)


@dataclass(frozen=True)
class DkimSigningKey:
    domain: str
    selector: str
    private_sealed: bytes

    def __repr__(self) -> str:
        return f"DkimSigningKey(domain={self.domain!r}, selector={self.selector!r})"


_COLUMNS = (
    "id, organization_id, name, dkim_selector, dkim_public_key, verified_at, verification, created_at, status"
)


# add_domain: the claim, unless another organization has verified the name already.
_ADD = f"""
INSERT INTO domains (organization_id, name, dkim_selector, dkim_private_sealed, dkim_public_key)
SELECT $1, $2, $3, $4, $5
 WHERE NOT EXISTS (SELECT 1 FROM domains WHERE name = $2 AND verified_at IS NOT NULL)
RETURNING {_COLUMNS}
"""


async def add_domain(
    pool: Executor,
    org_id: UUID,
    project_ids: list[UUID],
    name: str,
    selector: str,
    private_sealed: bytes,
    public_key: str,
) -> Domain:
    """A new claim; DomainTaken when another organization has verified the name, Conflict when
    this organization already claims it."""
    async with transaction(pool) as conn:
        try:
            row = await conn.fetchrow(_ADD, org_id, name, selector, private_sealed, public_key)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"{name} is already a domain of this organization", field="domain") from None
        if row is None:
            raise DomainTaken(f"{name} is verified by another organization", field="domain")
        await conn.executemany(
            "INSERT INTO domain_projects (domain_id, project_id) VALUES ($1, $2)",
            [(row["id"], p) for p in project_ids],
        )
    return Domain(**row)


async def get_domain_by_name(pool: asyncpg.Pool, name: str, org_id: UUID | None = None) -> Domain | None:
    """`org_id`'s claim on `name`; without it, the verified claim, else the only one (None when
    several organizations hold pending claims: the caller must say whose)."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM domains WHERE name = $1 AND ($2::uuid IS NULL OR organization_id = $2)"
        " ORDER BY verified_at IS NULL, created_at",
        name.lower(),
        org_id,
    )
    if not rows or (len(rows) > 1 and rows[0]["verified_at"] is None):
        return None
    return Domain(**rows[0])


async def record_verification(
    pool: Executor, domain_id: UUID, result: dict[str, Any], verified: bool
) -> Domain:
    """Store a check's result; `verified_at` is set when it passes and cleared when it fails.
    DomainTaken when it passes but another organization verified the name first."""
    try:
        row = required(
            await pool.fetchrow(
                "UPDATE domains SET verification = $2, last_checked_at = now(),"
                " verified_at = CASE WHEN $3 THEN COALESCE(verified_at, now()) ELSE NULL END,"
                " status = CASE WHEN $3 THEN 'verified' ELSE 'pending' END"
                f" WHERE id = $1 RETURNING {_COLUMNS}",
                domain_id,
                result,
                verified,
            )
        )
    except asyncpg.UniqueViolationError:
        raise DomainTaken("the domain is verified by another organization", field="domain") from None
    return Domain(**row)


async def verified_domains_of_project(conn: Executor, project_id: UUID) -> list[str]:
    rows = await conn.fetch(
        "SELECT d.name FROM domains d JOIN domain_projects dp ON dp.domain_id = d.id"
        " WHERE dp.project_id = $1 AND d.verified_at IS NOT NULL",
        project_id,
    )
    return [r["name"] for r in rows]


async def signing_key(pool: asyncpg.Pool, org_id: UUID, name: str) -> DkimSigningKey | None:
    row = await pool.fetchrow(
        "SELECT name, dkim_selector, dkim_private_sealed FROM domains"
        " WHERE organization_id = $1 AND name = $2",
        org_id,
        name.lower(),
    )
    if row is None:
        return None
    return DkimSigningKey(row["name"], row["dkim_selector"], row["dkim_private_sealed"])


async def get_domain(pool: asyncpg.Pool, domain_id: UUID) -> Domain | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM domains WHERE id = $1", domain_id)
    return Domain(**row) if row else None


async def list_domains(pool: asyncpg.Pool, org_id: UUID) -> list[Domain]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM domains WHERE organization_id = $1 ORDER BY name", org_id
    )
    return [Domain(**r) for r in rows]


async def project_ids_of_domain(pool: asyncpg.Pool, domain_id: UUID) -> list[UUID]:
    rows = await pool.fetch(
        "SELECT project_id FROM domain_projects WHERE domain_id = $1 ORDER BY project_id", domain_id
    )
    return [r["project_id"] for r in rows]


async def delete_domain(pool: Executor, domain_id: UUID) -> bool:
    return await pool.execute("DELETE FROM domains WHERE id = $1", domain_id) == "DELETE 1"
