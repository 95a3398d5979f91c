"""Human output: tables and `key  value` lines a person can copy from, never Python reprs."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from remails.cli_output import render, table
from tests.cli.conftest import Cli


def test_values_read_as_words_not_reprs() -> None:
    shown = render(
        {
            "id": UUID(int=1),
            "verified": True,
            "forced": False,
            "verified_at": None,
            "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "checks": {"dkim": {"ok": False, "found": [], "reason": "no TXT record"}},
        }
    )
    assert "None" not in shown and "True" not in shown and "False" not in shown and "{" not in shown
    lines = shown.splitlines()
    assert lines[:5] == [
        "id           00000000-0000-0000-0000-000000000001",
        "verified     yes",
        "forced       no",
        "verified_at  -",
        "at           2026-01-02 03:04:05 UTC",
    ]
    assert lines[6:] == ["checks:", "  NAME  OK  FOUND  REASON", "  dkim  no  -      no TXT record"]


def test_a_table_too_wide_becomes_one_block_per_row() -> None:
    key = "p=" + "A" * 300
    shown = table(
        [
            {"type": "TXT", "name": "s._domainkey.x.test", "value": key},
            {"type": "TXT", "name": "x.test", "value": "v=spf1 ~all"},
        ]
    )
    assert shown.split("\n\n") == [
        f"type   TXT\nname   s._domainkey.x.test\nvalue  {key}",
        "type   TXT\nname   x.test\nvalue  v=spf1 ~all",
    ]


async def test_created_objects_print_without_reprs(cli: Cli) -> None:
    shown = await cli.text("org", "create", "Acme", "--monthly-quota", "10")
    assert "None" not in shown and "monthly_quota       10" in shown and "ip_pool_id          -" in shown
