"""Organizations and their projects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

import asyncpg

from remails.db.rows import Executor, required
from remails.errors import Conflict

__all__ = [
    "Organization",
    "Project",
    "SenderFacts",
    "create_organization",
    "create_project",
    "get_organization",
    "get_project",
    "sender_facts",
    "set_block_status",
    "set_ip_pool",
]


@dataclass(frozen=True)
class Organization:
    id: UUID
    name: str
    monthly_quota: int
    quota_used: int
    quota_period_start: date
    block_status: str
    ip_pool_id: UUID | None
    created_at: datetime
    notification_email: str | None = None
    block_reason: str | None = None


@dataclass(frozen=True)
class Project:
    id: UUID
    organization_id: UUID
    name: str
    retention_days: int
    created_at: datetime
    sandbox: bool = False  # signed and recorded delivered, never sent to an MX


_ORG_COLUMNS = (
    "id, name, monthly_quota, quota_used, quota_period_start, block_status, ip_pool_id, created_at,"
    " notification_email, block_reason"
)
_PROJECT_COLUMNS = "id, organization_id, name, retention_days, created_at, sandbox"


async def create_organization(pool: Executor, name: str, monthly_quota: int | None = None) -> Organization:
    row = required(
        await pool.fetchrow(
            f"INSERT INTO organizations (name, monthly_quota) VALUES ($1, COALESCE($2, 3000))"
            f" RETURNING {_ORG_COLUMNS}",
            name,
            monthly_quota,
        )
    )
    return Organization(**row)


async def get_organization(pool: asyncpg.Pool, org_id: UUID) -> Organization | None:
    row = await pool.fetchrow(f"SELECT {_ORG_COLUMNS} FROM organizations WHERE id = $1", org_id)
    return Organization(**row) if row else None


async def set_ip_pool(pool: Executor, org_id: UUID, ip_pool_id: UUID | None) -> bool:
    status = await pool.execute(
        "UPDATE organizations SET ip_pool_id = $2, updated_at = now() WHERE id = $1",
        org_id,
        ip_pool_id,
    )
    return status == "UPDATE 1"


async def set_block_status(
    pool: Executor, org_id: UUID, block_status: str, reason: str | None = None
) -> bool:
    """Block (no_sending, full_freeze) with the operator's reason, or lift the block."""
    status = await pool.execute(
        "UPDATE organizations SET block_status = $2::block_status, updated_at = now(),"
        " block_reason = CASE WHEN $2::block_status = 'not_blocked' THEN NULL ELSE $3 END WHERE id = $1",
        org_id,
        block_status,
        reason,
    )
    return status == "UPDATE 1"


_NAME_TAKEN = "a project with this name exists in the organization"


async def create_project(
    pool: Executor, org_id: UUID, name: str, retention_days: int | None = None, *, sandbox: bool = False
) -> Project:
    """A new project; Conflict when the organization has one of that name."""
    try:
        row = await pool.fetchrow(
            "INSERT INTO projects (organization_id, name, retention_days, sandbox)"
            f" VALUES ($1, $2, COALESCE($3, 30), $4) RETURNING {_PROJECT_COLUMNS}",
            org_id,
            name,
            retention_days,
            sandbox,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(_NAME_TAKEN, field="name") from None
    return Project(**required(row))


async def get_project(pool: asyncpg.Pool, project_id: UUID) -> Project | None:
    row = await pool.fetchrow(f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = $1", project_id)
    return Project(**row) if row else None


@dataclass(frozen=True)
class SenderFacts:
    """What the edge needs to decide whether a project may send now."""

    organization_id: UUID
    project_id: UUID
    block_status: str
    quota_left: int
    verified_domains: list[str]


# sender_facts: a project's organization state and verified domains, in one round trip.
# A quota period that started before this month counts as unused (the reset is lazy).
_SENDER_FACTS = """
SELECT p.id AS project_id, o.id AS organization_id, o.block_status,
       o.monthly_quota - CASE WHEN o.quota_period_start < date_trunc('month', now())::date
                              THEN 0 ELSE o.quota_used END AS quota_left,
       ARRAY(SELECT d.name FROM domains d JOIN domain_projects dp ON dp.domain_id = d.id
              WHERE dp.project_id = p.id AND d.verified_at IS NOT NULL) AS verified_domains
  FROM projects p JOIN organizations o ON o.id = p.organization_id
 WHERE p.id = $1
"""


async def sender_facts(pool: asyncpg.Pool, project_id: UUID) -> SenderFacts | None:
    row = await pool.fetchrow(_SENDER_FACTS, project_id)
    if row is None:
        return None
    return SenderFacts(
        row["organization_id"],
        row["project_id"],
        row["block_status"],
        row["quota_left"],
        list(row["verified_domains"]),
    )


async def list_organizations(pool: asyncpg.Pool, org_id: UUID | None = None) -> list[Organization]:
    """All organizations, or just `org_id`'s."""
    rows = await pool.fetch(
        f"SELECT {_ORG_COLUMNS} FROM organizations WHERE $1::uuid IS NULL OR id = $1 ORDER BY created_at",
        org_id,
    )
    return [Organization(**r) for r in rows]


async def update_organization(
    pool: Executor,
    org_id: UUID,
    *,
    name: str | None = None,
    monthly_quota: int | None = None,
    block_status: str | None = None,
    notification_email: str | None = None,
) -> Organization | None:
    """None leaves a field as it is; notification_email "" clears it."""
    row = await pool.fetchrow(
        "UPDATE organizations SET name = COALESCE($2, name), monthly_quota = COALESCE($3, monthly_quota),"
        " block_status = COALESCE($4::block_status, block_status),"
        " notification_email = CASE WHEN $5::text IS NULL THEN notification_email ELSE NULLIF($5, '') END,"
        f" updated_at = now() WHERE id = $1 RETURNING {_ORG_COLUMNS}",
        org_id,
        name,
        monthly_quota,
        block_status,
        notification_email,
    )
    return Organization(**row) if row else None


async def list_projects(pool: asyncpg.Pool, org_id: UUID) -> list[Project]:
    rows = await pool.fetch(
        f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE organization_id = $1 ORDER BY created_at", org_id
    )
    return [Project(**r) for r in rows]


async def update_project(
    pool: Executor, project_id: UUID, *, name: str | None, retention_days: int | None
) -> Project | None:
    try:
        row = await pool.fetchrow(
            "UPDATE projects SET name = COALESCE($2, name), retention_days = COALESCE($3, retention_days),"
            f" updated_at = now() WHERE id = $1 RETURNING {_PROJECT_COLUMNS}",
            project_id,
            name,
            retention_days,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(_NAME_TAKEN, field="name") from None
    return Project(**row) if row else None


async def delete_project(pool: Executor, project_id: UUID) -> bool:
    return await pool.execute("DELETE FROM projects WHERE id = $1", project_id) == "DELETE 1"
