"""The operator's super-admin API token: stored as a digest in PostgreSQL like every API key, so
it survives restarts; shown once when created. On a laptop `remails up` creates it on first start
(and writes it to the data dir); in a cluster the operator rotates it from any pod that has the
database URL: `remails admin-token rotate` prints a new token and revokes the old ones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from uuid import UUID

from remails.db import Pool, audit
from remails.db.audit import Actor
from remails.db.credentials import create_api_key, has_super_admin
from remails.db.rows import Executor, transaction

__all__ = ["AdminKey", "admin_keys", "ensure_admin_token", "rotate_admin_token"]


@dataclass(frozen=True)
class AdminKey:
    """A super-admin key without its secret: enough to tell which token is in force."""

    id: UUID
    created_at: datetime
    description: str


async def ensure_admin_token(pool: Pool, data_dir: Path) -> str | None:
    """The new token when none existed (also written to `<data dir>/admin-token`, mode 0600)."""
    if await has_super_admin(pool):
        return None
    async with transaction(pool) as conn:
        key, token = await create_api_key(
            conn, None, "admin", description="operator (created on first start)"
        )
        await audit.record(
            conn, Actor("operator", "startup"), "admin_token.create", organization_id=None, target=key.id
        )
    _write_private(data_dir / "admin-token", token)
    return token


async def rotate_admin_token(pool: Executor) -> tuple[AdminKey, str]:
    """A new super-admin token; every older one stops working. The new key is written first, so
    a failure half-way leaves a working token, never none."""
    key, token = await create_api_key(pool, None, "admin", description="operator (rotated)")
    await pool.execute("DELETE FROM api_keys WHERE organization_id IS NULL AND id <> $1", key.id)
    return AdminKey(key.id, key.created_at, "operator (rotated)"), token


async def admin_keys(pool: Pool) -> list[AdminKey]:
    rows = await pool.fetch(
        "SELECT id, created_at, description FROM api_keys WHERE organization_id IS NULL ORDER BY created_at"
    )
    return [AdminKey(r["id"], r["created_at"], r["description"]) for r in rows]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)
