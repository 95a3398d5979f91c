"""The operator's token in a cluster: `remails admin-token rotate`, run in any pod with the
database URL (as `kubectl exec` does), prints a token the API accepts; it survives restarts
because only its digest is stored; rotating again revokes it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from remails.admin_token import ensure_admin_token
from remails.db import Pool
from remails.db.credentials import authenticate_api_key


async def _cli(dsn: str, data_dir: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "REMAILS_DATABASE_URL": dsn, "REMAILS_DATA_DIR": str(data_dir)}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "remails.cli", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


async def test_rotate_prints_a_working_token_and_revokes_the_previous_ones(
    dsn: str, pool: Pool, tmp_path: Path
) -> None:
    # What the API did on its first start: a token nobody can read (it went to an emptyDir).
    lost = await ensure_admin_token(pool, tmp_path / "gone")
    assert lost is not None

    first = await _cli(dsn, tmp_path, "admin-token", "rotate")
    key = await authenticate_api_key(pool, first["token"])
    assert key is not None and key.organization_id is None and key.role == "admin"
    assert await authenticate_api_key(pool, lost) is None

    # The digest is in PostgreSQL, not in the process: a fresh connection still accepts it.
    hint = await _cli(dsn, tmp_path, "admin-token", "show-hint")
    assert [k["id"] for k in hint["admin_keys"]] == [first["id"]]
    assert first["token"] not in json.dumps(hint)

    second = await _cli(dsn, tmp_path, "admin-token", "rotate")
    assert await authenticate_api_key(pool, first["token"]) is None
    assert await authenticate_api_key(pool, second["token"]) is not None
    # Nothing written to the data dir: the token is printed once, to the operator.
    assert not (tmp_path / "admin-token").exists()


async def test_the_token_made_on_first_start_is_in_the_audit_log(pool: Pool, tmp_path: Path) -> None:
    assert await ensure_admin_token(pool, tmp_path) is not None
    assert await ensure_admin_token(pool, tmp_path) is None  # one token, one entry
    rows = await pool.fetch("SELECT actor_kind, actor_id, action, target FROM audit_log")
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE organization_id IS NULL")
    assert [tuple(r) for r in rows] == [("operator", "startup", "admin_token.create", str(key_id))]
