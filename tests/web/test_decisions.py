"""The pure decisions behind accounts and the statistics chart (no I/O)."""

from __future__ import annotations

from datetime import date

import pyotp

from remails.accounts import (
    csrf_matches,
    csrf_token,
    hash_password,
    new_recovery_codes,
    password_problem,
    throttled,
    totp_step,
    verify_password,
)
from remails_functions.web.activity import stacked_bars


def test_passwords_are_argon2id_and_verified() -> None:
    stored = hash_password("a long enough secret")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "a long enough secret")
    assert not verify_password(stored, "a long enough secreT")
    assert not verify_password(None, "anything")  # no such user: refused, same work
    assert not verify_password("not a hash", "anything")


def test_password_rules() -> None:
    assert password_problem("short") is not None
    assert password_problem("x" * 12) is None
    assert password_problem("x" * 2000) is not None


def test_throttle_by_account_and_by_client() -> None:
    assert not throttled(4, 4, 5)
    assert throttled(5, 0, 5)
    assert not throttled(0, 19, 5)
    assert throttled(0, 20, 5)


def test_totp_accepts_neighbouring_steps_once() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = int(now) // 30
    assert totp_step(secret, totp.at(now), None, now) == step
    assert totp_step(secret, totp.at(now - 30), None, now) == step - 1
    assert totp_step(secret, totp.at(now + 30), None, now) == step + 1
    assert totp_step(secret, totp.at(now - 60), None, now) is None  # too old
    assert totp_step(secret, totp.at(now), step, now) is None  # already used
    assert totp_step(secret, totp.at(now), step - 1, now) == step
    assert totp_step(secret, "12 34 56", None, now) in (None, step - 1, step, step + 1)
    assert totp_step(secret, "abcdef", None, now) is None


def test_csrf_token_belongs_to_its_session() -> None:
    assert csrf_matches("session-a", csrf_token("session-a"))
    assert not csrf_matches("session-b", csrf_token("session-a"))
    assert not csrf_matches("session-a", None)
    assert not csrf_matches("session-a", "")


def test_recovery_codes_are_distinct() -> None:
    codes = new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    assert all(len(c) == 11 and c[5] == "-" for c in codes)


def test_stacked_bars_scale_to_the_busiest_day() -> None:
    first = date(2026, 11, 1)
    rows = [
        {"day": date(2026, 11, 1), "status": "delivered", "count": 30},
        {"day": date(2026, 11, 1), "status": "bounced", "count": 10},
        {"day": date(2026, 11, 3), "status": "delivered", "count": 20},
        {"day": date(2026, 11, 3), "status": "sending", "count": 5},
    ]
    bars, peak = stacked_bars(rows, first, 5, height=100)
    assert peak == 40 and len(bars) == 5
    assert [b["total"] for b in bars] == [40, 0, 25, 0, 0]
    busiest = bars[0]["segments"]
    assert [(s["status"], s["h"]) for s in busiest] == [("delivered", 75.0), ("bounced", 25.0)]
    assert busiest[-1]["y"] == 0.0  # the tallest bar reaches the top
    assert [s["status"] for s in bars[2]["segments"]] == ["delivered", "in_progress"]
    assert stacked_bars([], first, 3) == (
        [
            {"day": d, "total": 0, "segments": []}
            for d in (date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3))
        ],
        0,
    )


def test_closed_days_are_the_whole_days_before_today() -> None:
    from datetime import UTC, datetime

    from remails.db.message_stats import closed_days

    now = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert closed_days(datetime(2026, 11, 1, 15, 30, tzinfo=UTC), now) == (
        date(2026, 11, 2),
        date(2026, 12, 1),
    )
    assert closed_days(datetime(2026, 11, 1, tzinfo=UTC), now) == (date(2026, 11, 1), date(2026, 12, 1))
    assert closed_days(datetime(2026, 12, 1, 1, tzinfo=UTC), now) == (date(2026, 12, 2), date(2026, 12, 2))
