"""DMARC aggregate reports as the customer reads them: a pass/fail summary per source IP.

Pure. A report row passes DMARC when its DKIM or SPF result (already evaluated for alignment
by the reporter, `policy_evaluated`) is `pass`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["summarise"]


def summarise(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages, passing and failing, by source IP (sorted), over the records of any reports."""
    passed: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    for record in records:
        ip, count = str(record.get("source_ip", "")), int(record.get("count", 0))
        if "pass" in (record.get("dkim"), record.get("spf")):
            passed[ip] += count
        else:
            failed[ip] += count
    return [
        {
            "source_ip": ip,
            "messages": passed[ip] + failed[ip],
            "dmarc_pass": passed[ip],
            "dmarc_fail": failed[ip],
        }
        for ip in sorted(set(passed) | set(failed))
    ]
