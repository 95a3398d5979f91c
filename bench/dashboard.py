"""bench/dashboard: the dashboard's heavy pages against a large message log.

Embedded PostgreSQL in a temp dir, N messages (default 1,000,000) of one organization spread
over 30 days and three projects, each with one recipient (100,000 distinct addresses) and one
attempt, generated in SQL. The dashboard app runs in this process (ASGI, no socket) with a
signed-in session; each page is requested `--repeat` times after a warm-up and timed.

    bench/dashboard                          # 1,000,000 messages
    bench/dashboard --messages 20000 --repeat 5 --json
    bench/dashboard --plans                  # also EXPLAIN (ANALYZE) of the queries behind them
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# generate: the message log, in one statement per table (server-side, no round trips per row).
_MESSAGES = """
INSERT INTO messages (organization_id, project_id, mail_from, size, raw, message_id_header, status,
                      attempts, expires_at, created_at, updated_at, finished_at)
SELECT $1, ($2::uuid[])[1 + i % 3], 'app@bench.test', 320, $3::bytea, '<' || i || '@bench.test>',
       (CASE WHEN i % 20 = 0 THEN 'bounced' WHEN i % 50 = 1 THEN 'deferred'
             WHEN i % 100 = 2 THEN 'failed' ELSE 'delivered' END)::message_status,
       1, now() + interval '1 day', t, t, t
  FROM generate_series(1, $4::int) AS i,
       LATERAL (SELECT now() - (i::float8 / $4) * interval '30 days' AS t) AS at
"""
_RECIPIENTS = """
INSERT INTO recipients (message_id, address, domain, status, last_code, attempts, delivered_at)
SELECT m.id, 'user' || (abs(hashtext(m.id::text)) % 100000) || '@dest.test', 'dest.test',
       (CASE m.status WHEN 'delivered' THEN 'delivered' WHEN 'bounced' THEN 'bounced'
             WHEN 'failed' THEN 'failed' ELSE 'deferred' END)::recipient_status,
       CASE m.status WHEN 'delivered' THEN 250 ELSE 550 END, 1, m.finished_at
  FROM messages m WHERE m.organization_id = $1
"""
_ATTEMPTS = """
INSERT INTO attempts (message_id, domain, recipients, mx_host, code, text, duration_ms, started_at)
SELECT m.id, 'dest.test', ARRAY['x@dest.test'], 'mx.dest.test', 250, 'ok', 12, m.created_at
  FROM messages m WHERE m.organization_id = $1
"""
RAW = (
    b"From: App <app@bench.test>\r\nTo: user@dest.test\r\nSubject: Your receipt\r\n"
    b"Message-ID: <x@bench.test>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n" + b"x" * 160 + b"\r\n"
)


async def _generate(pool: Any, org_id: Any, projects: list[Any], n: int) -> float:
    started = time.monotonic()
    batch = 200_000
    done = 0
    while done < n:
        size = min(batch, n - done)
        await pool.execute(_MESSAGES, org_id, projects, RAW, size)
        done += size
    await pool.execute(_RECIPIENTS, org_id)
    await pool.execute(_ATTEMPTS, org_id)
    await pool.execute("VACUUM ANALYZE messages")
    await pool.execute("VACUUM ANALYZE recipients")
    await pool.execute("VACUUM ANALYZE attempts")
    return time.monotonic() - started


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def _time_pages(client: Any, pages: dict[str, str], repeat: int) -> dict[str, dict[str, float]]:
    figures = {}
    for name, url in pages.items():
        first = 0.0
        for _ in range(2):  # warm-up: caches, prepared statements (and the statistics' day counts)
            started = time.perf_counter()
            answer = await client.get(url)
            first = first or (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise SystemExit(f"{url}: {answer.status_code} {answer.text[:500]}")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            answer = await client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"{url}: {answer.status_code}")
        figures[name] = {
            "first_ms": round(first, 1),
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(_percentile(times, 0.95), 1),
            "max_ms": round(max(times), 1),
        }
    return figures


async def _plans(pool: Any, org_id: Any, project_id: Any, message_id: Any, recipient: str) -> dict[str, str]:
    """The plans of the statements the pages run, with the pages' parameters."""
    from remails.db import message_stats, messages

    since = datetime.now(UTC) - timedelta(days=30)
    week = datetime.now(UTC) - timedelta(days=7)
    cases: dict[str, tuple[Any, ...]] = {
        "list": (org_id, None, None, None, None, None, None, None, None, 51),
        "list_status": (org_id, None, "bounced", None, None, None, None, None, None, 51),
        "list_recipient": (org_id, None, None, None, recipient, None, None, None, None, 51),
        "list_dates": (org_id, None, None, None, None, week - timedelta(days=1), week, None, None, 51),
        "list_project": (org_id, project_id, None, None, None, None, None, None, None, 51),
    }
    out = {}
    async with pool.acquire() as conn:
        for name, args in cases.items():
            sql = messages._LIST_BY_RECIPIENT if name == "list_recipient" else messages._LIST
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            out[name] = "\n".join(r[0] for r in rows)
        first, end = message_stats.closed_days(since, datetime.now(UTC))
        start = datetime.combine(first, datetime.min.time(), UTC)
        stop = datetime.combine(end, datetime.min.time(), UTC)
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + message_stats._STORED, org_id, first, end)
        out["statistics_stored"] = "\n".join(r[0] for r in rows)
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + message_stats._LIVE, org_id, since, start, stop
        )
        out["statistics_live"] = "\n".join(r[0] for r in rows)
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM recipients WHERE message_id = $1 ORDER BY id",
            message_id,
        )
        out["message_recipients"] = "\n".join(r[0] for r in rows)
    return out


async def run(n: int, repeat: int, plans: bool) -> dict[str, Any]:
    import httpx

    from remails.accounts import hash_password
    from remails.config import load_settings
    from remails.context import Context
    from remails.crypto import load_master_key
    from remails.db import connect, orgs, users
    from remails_functions.api import create_app

    class _DropEvents:
        async def publish(self, event: Any) -> None:
            """Nothing downstream: the bench reads."""

    with tempfile.TemporaryDirectory(prefix="remails-dash-bench-") as tmp:
        settings = load_settings(data_dir=Path(tmp), hostname="bench.test")
        db = await connect(settings, max_size=10)
        try:
            org = await orgs.create_organization(db.pool, "Bench", 10_000_000)
            projects = [(await orgs.create_project(db.pool, org.id, f"p{i}")).id for i in range(3)]
            other = await orgs.create_organization(db.pool, "Neighbour")
            await orgs.create_project(db.pool, other.id, "p")
            generate_s = await _generate(db.pool, org.id, projects, n)
            user = await users.create_user(db.pool, "bench@bench.test", hash_password("bench password 1"))
            await users.set_membership(db.pool, org.id, user.id, "read_only")

            ctx = Context(settings, db.pool, _DropEvents(), load_master_key(None, settings.data_dir))
            transport = httpx.ASGITransport(app=create_app(ctx))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench.test") as client:
                form = await client.get("/login")
                csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
                answer = await client.post(
                    "/login", data={"email": "bench@bench.test", "password": "bench password 1", "csrf": csrf}
                )
                if answer.status_code != 303:
                    raise SystemExit(f"login failed: {answer.text[:300]}")
                message_id, recipient = await db.pool.fetchrow(  # type: ignore[misc]  # one row: LIMIT 1 of many
                    "SELECT m.id, r.address FROM messages m JOIN recipients r ON r.message_id = m.id"
                    " WHERE m.organization_id = $1 ORDER BY m.created_at LIMIT 1 OFFSET $2",
                    org.id,
                    n // 2,
                )
                base = f"/orgs/{org.id}"
                day = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()
                pages = {
                    "messages": f"{base}/messages",
                    "messages_status": f"{base}/messages?status=bounced",
                    "messages_recipient": f"{base}/messages?recipient={recipient}",
                    "messages_date": f"{base}/messages?from={day}&to={day}",
                    "messages_project": f"{base}/messages?project={projects[1]}",
                    "messages_all_filters": (
                        f"{base}/messages?status=delivered&recipient={recipient}&from={day}"
                        f"&to={day}&project={projects[1]}"
                    ),
                    "message": f"{base}/messages/{message_id}",
                    "statistics": f"{base}/statistics",
                }
                figures = await _time_pages(client, pages, repeat)
            result: dict[str, Any] = {"messages": n, "generate_s": round(generate_s, 1), "pages": figures}
            if plans:
                result["plans"] = await _plans(db.pool, org.id, projects[1], message_id, recipient)
            return result
        finally:
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN ANALYZE of each query")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.messages, args.repeat, args.plans))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['messages']:,} messages generated in {result['generate_s']} s")
    print(f"{'page':<22} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, f in result["pages"].items():
        print(f"{name:<22} {f['first_ms']:>9} {f['p50_ms']:>8} {f['p95_ms']:>8} {f['max_ms']:>8}")
    for name, plan in result.get("plans", {}).items():
        print(f"\n-- {name}\n{plan}")


if __name__ == "__main__":
    main()
