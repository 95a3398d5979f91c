"""The operator's super-admin API token: created on first start, written once to the data dir."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from remails.db.credentials import create_api_key, has_super_admin

__all__ = ["ensure_admin_token"]


async def ensure_admin_token(pool: asyncpg.Pool, data_dir: Path) -> str | None:
    """The new token when none existed (also written to `<data dir>/admin-token`, mode 0600)."""
    if await has_super_admin(pool):
        return None
    _, token = await create_api_key(pool, None, "admin", description="operator (created on first start)")
    _write_private(data_dir / "admin-token", token)
    return token


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)
