"""Text from clients may not hold NUL: PostgreSQL text cannot store it, and no mail needs it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["NO_NUL", "ClientInput", "reject_nul"]

NO_NUL = r"^[^\x00]*$"  # a pattern for query and path parameters


def reject_nul(value: Any) -> Any:
    """Raise ValueError when a string anywhere in `value` (nested too) holds a NUL character."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            reject_nul(k)
            reject_nul(v)
    elif isinstance(value, list | tuple):
        for v in value:
            reject_nul(v)
    return value


class ClientInput(BaseModel):
    """A request body from a client: unknown fields refused, no NUL in any string."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return reject_nul(value)
