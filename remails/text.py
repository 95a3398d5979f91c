"""Text from clients: no NUL (PostgreSQL text cannot store it, and no mail needs it), and no
control characters (C0 other than tab, CR and LF; DEL; C1; the Unicode line and paragraph
separators) outside free-text bodies: mail headers cannot carry them, and some readers take
them for line breaks."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

__all__ = ["NO_NUL", "ClientInput", "reject_control", "reject_nul"]

NO_NUL = r"^[^\x00]*$"  # a pattern for query and path parameters

_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def _walk(value: Any, check: Any) -> Any:
    if isinstance(value, str):
        check(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(k, check)
            _walk(v, check)
    elif isinstance(value, list | tuple):
        for v in value:
            _walk(v, check)
    return value


def _nul(text: str) -> None:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")


def _control(text: str) -> None:
    _nul(text)
    found = _CONTROL.search(text)
    if found:
        raise ValueError(f"must not contain control characters (found U+{ord(found.group()):04X})")


def reject_nul(value: Any) -> Any:
    """Raise ValueError when a string anywhere in `value` (nested too) holds a NUL character."""
    return _walk(value, _nul)


def reject_control(value: Any) -> Any:
    """Raise ValueError when a string anywhere in `value` holds NUL or a control character."""
    return _walk(value, _control)


class ClientInput(BaseModel):
    """A request body from a client: unknown fields refused, no NUL in any string, and no
    control characters except in the fields named in `free_text` (message bodies)."""

    model_config = ConfigDict(extra="forbid")
    free_text: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name in cls.free_text:
            return reject_nul(value)
        return reject_control(value)
