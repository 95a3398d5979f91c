"""How the CLI shows a result to a person: aligned tables and `key  value` lines, never reprs.

Pure functions from plain (already JSON-able) data to text. `--json` bypasses all of this.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["cell", "render", "table"]

# A table wider than this is shown as one block per row, so that long values (a DKIM key)
# stay on a line of their own and can be copied whole.
MAX_TABLE_WIDTH = 160


def cell(value: Any) -> str:
    """One value as a person reads it: no `None`/`True`, lists joined, nested maps as k=v."""
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) if value else "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows under upper-case headings, columns separated by two spaces; blocks when too wide."""
    if not rows:
        return "(none)"
    names = columns or _columns(rows)
    cells = [[cell(row.get(name)) for name in names] for row in rows]
    widths = [max(len(name), *(len(r[i]) for r in cells)) for i, name in enumerate(names)]
    if sum(widths) + 2 * (len(widths) - 1) > MAX_TABLE_WIDTH:
        return _blocks(names, cells)
    lines = ["  ".join(name.upper().ljust(w) for name, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _blocks(names: list[str], cells: list[list[str]]) -> str:
    width = max(len(n) for n in names)
    blocks = ["\n".join(f"{n.ljust(width)}  {c}" for n, c in zip(names, r, strict=True)) for r in cells]
    return "\n\n".join(blocks)


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def render(result: dict[str, Any]) -> str:
    """Scalars as aligned `key  value` lines; each list of objects as a titled table below them;
    a nested object as indented lines. A result that is only one list is only its table. An
    `explanation` leads as a sentence of its own, a `hint` closes."""
    if len(result) == 1 and isinstance(only := next(iter(result.values())), list):
        return table(only) if not only or _is_rows(only) else cell(only)
    lead, hint = result.get("explanation"), result.get("hint")
    result = {k: v for k, v in result.items() if k not in ("explanation", "hint")}
    lists = {k: v for k, v in result.items() if _is_rows(v)}
    scalars = {k: v for k, v in result.items() if k not in lists and not isinstance(v, dict)}
    nested = {k: v for k, v in result.items() if isinstance(v, dict)}
    out: list[str] = [f"{lead}\n"] if isinstance(lead, str) else []
    if scalars:
        width = max(len(k) for k in scalars)
        out += [f"{k.ljust(width)}  {cell(v)}" for k, v in scalars.items()]
    for key, value in nested.items():
        out.append(f"\n{key}:" if out else f"{key}:")
        if value and all(isinstance(v, dict) for v in value.values()):
            out.append(_indent(table([{"name": k, **v} for k, v in value.items()])))
        elif value:
            width = max(len(k) for k in value)
            out += [f"  {k.ljust(width)}  {cell(v)}" for k, v in value.items()]
        else:
            out.append("  (none)")
    for key, rows in lists.items():
        out.append(f"\n{key}:" if out else f"{key}:")
        out.append(_indent(table(rows)))
    if isinstance(hint, str):
        out.append(f"\n{hint}")
    return "\n".join(out)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())
