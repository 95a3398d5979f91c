"""SMTP credentials and API keys: secrets are generated here and stored only as digests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.crypto import digest, digest_matches, generate_secret
from remails.db.rows import Executor, required

__all__ = [
    "ApiKey",
    "SmtpCredential",
    "SmtpIdentity",
    "authenticate_api_key",
    "authenticate_smtp",
    "create_api_key",
    "create_smtp_credential",
]


@dataclass(frozen=True)
class SmtpCredential:
    id: UUID
    project_id: UUID
    username: str
    created_at: datetime


@dataclass(frozen=True)
class SmtpIdentity:
    """Who an authenticated SMTP session sends as."""

    credential_id: UUID | None
    project_id: UUID
    organization_id: UUID


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    organization_id: UUID | None
    project_id: UUID | None
    role: str
    created_at: datetime
    description: str = ""  # the key's name, chosen by whoever created it


async def create_smtp_credential(
    pool: Executor, project_id: UUID, description: str = ""
) -> tuple[SmtpCredential, str]:
    """A new credential and its password, which is never stored and never shown again."""
    password = generate_secret(24)
    username = "smtp_" + generate_secret(9).replace("-", "x").replace("_", "y").lower()
    row = required(
        await pool.fetchrow(
            "INSERT INTO smtp_credentials (project_id, username, secret_sha256, description)"
            " VALUES ($1, $2, $3, $4) RETURNING id, project_id, username, created_at",
            project_id,
            username,
            digest(password),
            description,
        )
    )
    return SmtpCredential(**row), password


# authenticate_smtp: username → project and organization, when the password matches.
_SMTP_LOOKUP = """
SELECT c.id, c.secret_sha256, p.id AS project_id, p.organization_id
  FROM smtp_credentials c JOIN projects p ON p.id = c.project_id
 WHERE c.username = $1
"""


async def authenticate_smtp(pool: asyncpg.Pool, username: str, password: str) -> SmtpIdentity | None:
    row = await pool.fetchrow(_SMTP_LOOKUP, username)
    if row is None:
        digest_matches(password, b"\0" * 32)  # same work whether or not the user exists
        return None
    if not digest_matches(password, row["secret_sha256"]):
        return None
    return SmtpIdentity(row["id"], row["project_id"], row["organization_id"])


async def create_api_key(
    pool: Executor,
    org_id: UUID | None,
    role: str,
    project_id: UUID | None = None,
    description: str = "",
) -> tuple[ApiKey, str]:
    """A new key and its token `<key id>.<secret>`, shown once."""
    secret = generate_secret(24)
    row = required(
        await pool.fetchrow(
            "INSERT INTO api_keys (organization_id, project_id, role, secret_sha256, description)"
            " VALUES ($1, $2, $3, $4, $5)"
            " RETURNING id, organization_id, project_id, role, created_at, description",
            org_id,
            project_id,
            role,
            digest(secret),
            description,
        )
    )
    key = ApiKey(**row)
    return key, f"rmk_{key.id.hex}.{secret}"


async def authenticate_api_key(pool: asyncpg.Pool, token: str) -> ApiKey | None:
    key_part, _, secret = token.partition(".")
    try:
        key_id = UUID(hex=key_part.removeprefix("rmk_"))
    except ValueError:
        return None
    row = await pool.fetchrow(
        "SELECT id, organization_id, project_id, role, created_at, secret_sha256 FROM api_keys WHERE id = $1",
        key_id,
    )
    if row is None or not digest_matches(secret, row["secret_sha256"]):
        return None
    return ApiKey(**{k: v for k, v in row.items() if k != "secret_sha256"})


async def list_smtp_credentials(pool: asyncpg.Pool, project_id: UUID) -> list[SmtpCredential]:
    rows = await pool.fetch(
        "SELECT id, project_id, username, created_at FROM smtp_credentials WHERE project_id = $1"
        " ORDER BY created_at",
        project_id,
    )
    return [SmtpCredential(**r) for r in rows]


async def get_smtp_credential(pool: asyncpg.Pool, credential_id: UUID) -> tuple[SmtpCredential, UUID] | None:
    """The credential and its organization."""
    row = await pool.fetchrow(
        "SELECT c.id, c.project_id, c.username, c.created_at, p.organization_id"
        " FROM smtp_credentials c JOIN projects p ON p.id = c.project_id WHERE c.id = $1",
        credential_id,
    )
    if row is None:
        return None
    return SmtpCredential(row["id"], row["project_id"], row["username"], row["created_at"]), row[
        "organization_id"
    ]


async def delete_smtp_credential(pool: Executor, credential_id: UUID) -> bool:
    return await pool.execute("DELETE FROM smtp_credentials WHERE id = $1", credential_id) == "DELETE 1"


async def list_api_keys(pool: asyncpg.Pool, org_id: UUID) -> list[ApiKey]:
    rows = await pool.fetch(
        "SELECT id, organization_id, project_id, role, created_at, description FROM api_keys"
        " WHERE organization_id = $1 ORDER BY created_at",
        org_id,
    )
    return [ApiKey(**r) for r in rows]


async def get_api_key(pool: asyncpg.Pool, key_id: UUID) -> ApiKey | None:
    row = await pool.fetchrow(
        "SELECT id, organization_id, project_id, role, created_at, description FROM api_keys WHERE id = $1",
        key_id,
    )
    return ApiKey(**row) if row else None


async def delete_api_key(pool: Executor, key_id: UUID) -> bool:
    return await pool.execute("DELETE FROM api_keys WHERE id = $1", key_id) == "DELETE 1"


async def has_super_admin(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys WHERE organization_id IS NULL)"))
