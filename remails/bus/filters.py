"""Knative Trigger filter semantics, as a pure function over CloudEvent attributes.

Supports the dialects of `spec.filters`: exact, prefix, suffix, all, any, not. A list of
filters matches when every one does; an empty list matches everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Filter", "matches", "required_type"]

Filter = Mapping[str, Any]


def _compare(kind: str, spec: Mapping[str, str], attributes: Mapping[str, Any]) -> bool:
    for name, want in spec.items():
        value = attributes.get(name)
        if value is None:
            return False
        text = str(value)
        if kind == "exact" and text != want:
            return False
        if kind == "prefix" and not text.startswith(want):
            return False
        if kind == "suffix" and not text.endswith(want):
            return False
    return True


def _one(f: Filter, attributes: Mapping[str, Any]) -> bool:
    if len(f) != 1:
        raise ValueError(f"a filter has exactly one dialect, got {sorted(f)}")
    ((kind, spec),) = f.items()
    if kind in ("exact", "prefix", "suffix"):
        return _compare(kind, spec, attributes)
    if kind == "all":
        return all(_one(sub, attributes) for sub in spec)
    if kind == "any":
        return any(_one(sub, attributes) for sub in spec)
    if kind == "not":
        return not _one(spec, attributes)
    raise ValueError(f"unsupported filter dialect {kind!r}")


def matches(filters: Sequence[Filter], attributes: Mapping[str, Any]) -> bool:
    return all(_one(f, attributes) for f in filters)


def required_type(filters: Sequence[Filter]) -> str | None:
    """The event type every matching event has, when the filters pin one with a top-level
    exact filter (as every trigger of ours does); None when they match several types."""
    for f in filters:
        exact = f.get("exact")
        if len(f) == 1 and isinstance(exact, Mapping) and isinstance(exact.get("type"), str):
            return str(exact["type"])
    return None
