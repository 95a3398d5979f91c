"""How a worker of `remails up` tells its supervisor that it is up, or why it could not start:
one line on a pipe the supervisor handed it (REMAILS_READY_FD).

A worker that exits before it is up stops the whole `remails up` with its reason as the last
line (a port in use, a bad setting) instead of being started again forever; one that dies
after it was up is started again.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["READY_FD_ENV", "report_failure", "report_ready"]

READY_FD_ENV = "REMAILS_READY_FD"
READY = b"ready"

_reported = False


def _write(line: bytes) -> bool:
    global _reported
    fd = os.environ.get(READY_FD_ENV)
    if fd is None or _reported:
        return False
    _reported = True
    with contextlib.suppress(OSError, ValueError):
        os.write(int(fd), line + b"\n")
        return True
    return False


def report_ready() -> None:
    _write(READY)


def report_failure(message: str) -> bool:
    """In a worker that is not up yet: hand `message` to the supervisor (which prints it when
    it has stopped the others). False: no supervisor waits for it — print it yourself."""
    return _write(b"failed " + message.replace("\n", " ").encode(errors="replace"))


def read_report(data: bytes) -> tuple[bool, str | None]:
    """What a worker reported: (up, the reason it could not start, if it gave one)."""
    line = data.split(b"\n", 1)[0]
    if line == READY:
        return True, None
    if line.startswith(b"failed "):
        return False, line[len(b"failed ") :].decode(errors="replace")
    return False, None
