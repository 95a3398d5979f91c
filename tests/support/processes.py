"""Processes of a `remails up` under test: its workers, and a crash of the whole tree."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _parent(int(entry.name)) == pid:
                    found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (the embedded PostgreSQL is not: it detaches)."""
    return [p for child in children(pid) for p in (child, *descendants(child))]


def worker_pids(supervisor: int, role: str) -> list[int]:
    """The supervisor's workers started with REMAILS_WORKER_ROLE=`role`."""
    found = []
    for pid in children(supervisor):
        with contextlib.suppress(OSError):
            if f"REMAILS_WORKER_ROLE={role}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(
                b"\0"
            ):
                found.append(pid)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything under it at once: a crash of every process, nothing
    flushed (a worker would otherwise get SIGTERM from its parent's death and stop cleanly)."""
    tree = descendants(pid)
    for victim in (pid, *tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
