"""Processes of a `remails up` under test: its workers, and a crash of the whole tree."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (the embedded PostgreSQL is not: it detaches)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _parent(int(entry.name)) == pid:
                    children.append(int(entry.name))
    return [p for child in children for p in (child, *descendants(child))]


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything under it at once: a crash of every process, nothing
    flushed (a worker would otherwise get SIGTERM from its parent's death and stop cleanly)."""
    tree = descendants(pid)
    for victim in (pid, *tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
