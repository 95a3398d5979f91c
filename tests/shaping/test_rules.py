"""The pure parts of per-site shaping: site names, override matching, the shaping file, which
replies throttle, and the suspension and restore arithmetic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from remails.db.shaping import SiteState
from remails.errors import ConfigError
from remails_sender_node.shaping import (
    Limits,
    RateState,
    ShapingConfig,
    Throttle,
    after_throttle,
    chunk_size,
    effective_factor,
    grant,
    is_throttling,
    limits_for,
    load_shaping,
    parse_shaping,
    pattern_matches,
    site_name,
    take_budget,
    throttle_site,
    window_limit,
)

GOOGLE_MX = [
    "gmail-smtp-in.l.google.com.",
    "ALT1.gmail-smtp-in.l.google.com",
    "alt2.gmail-smtp-in.l.google.com",
]


def test_domains_on_the_same_mx_set_share_one_site_whatever_the_order_and_case() -> None:
    gmail = site_name(GOOGLE_MX)
    googlemail = site_name(reversed([h.upper() for h in GOOGLE_MX]))
    assert gmail == googlemail
    assert (
        gmail == "alt1.gmail-smtp-in.l.google.com,alt2.gmail-smtp-in.l.google.com,gmail-smtp-in.l.google.com"
    )
    assert site_name(["mx.other.test"]) != gmail


def test_a_site_of_very_many_mx_hosts_has_a_bounded_name() -> None:
    name = site_name(f"mx{i:03}.example.test" for i in range(200))
    assert len(name) <= 402 and name.endswith(",…")


def test_suffix_patterns_match_any_depth_below_and_literals_only_themselves() -> None:
    assert pattern_matches("alt1.gmail-smtp-in.l.google.com", "*.google.com")
    assert pattern_matches("a.b.c.protection.outlook.com.", "*.protection.outlook.com")
    assert not pattern_matches("google.com", "*.google.com")
    assert not pattern_matches("evilgoogle.com", "*.google.com")
    assert pattern_matches("MX.Example.Test", "mx.example.test")
    assert not pattern_matches("mx2.example.test", "mx.example.test")


def test_an_override_matches_when_any_mx_host_matches_any_pattern() -> None:
    config = parse_shaping(
        '[sites.big]\nmx = ["*.big.test", "mx.literal.test"]\nmax_connections = 2\n',
        "test",
        ShapingConfig(defaults=Limits(max_connections=10, idle_seconds=7)),
    )
    limits, rule = limits_for(config, ["mx1.small.test", "mx9.big.test"])
    assert rule == "big"
    assert limits == Limits(max_connections=2, idle_seconds=7)  # the rest from the defaults
    assert limits_for(config, ["mx.literal.test"])[1] == "big"
    assert limits_for(config, ["mx.other.test"]) == (config.defaults, None)


def test_the_shipped_file_limits_the_large_providers_and_the_users_file_overrides_it(tmp_path: Path) -> None:
    shipped = load_shaping(Limits(), None)
    assert limits_for(shipped, GOOGLE_MX)[1] == "google"
    assert limits_for(shipped, ["example-com.mail.protection.outlook.com"])[1] == "microsoft"
    assert limits_for(shipped, ["mta5.am0.yahoodns.net"])[1] == "yahoo"
    assert limits_for(shipped, ["mx00.gmx.net"])[1] == "gmx-webde"
    assert limits_for(shipped, ["mx1.example.test"])[1] is None
    user = tmp_path / "shaping.toml"
    user.write_text(
        "[default]\nmax_connections = 3\n"
        '[sites.google]\nmx = ["*.google.com"]\nmax_connections = 1\n'
        '[sites.mine]\nmx = ["*.mine.test"]\nmax_deliveries_per_minute = 30\n'
    )
    config = load_shaping(Limits(), user)
    assert limits_for(config, GOOGLE_MX)[0].max_connections == 1  # replaced by name
    assert limits_for(config, ["mx.mine.test"])[0] == Limits(max_connections=3, max_deliveries_per_minute=30)
    assert limits_for(config, ["mx00.gmx.net"])[1] == "gmx-webde"  # the shipped ones stay


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sites.a]\nmx = [\n", "not valid TOML"),
        (
            '[sites.a]\nmx = ["*.a.test"]\nmax_conections = 2\n',
            "line 3): [sites.a]: unknown key 'max_conections'",
        ),
        (
            '[sites.a]\nmx = ["*.a.test"]\n\nmax_connections = 0\n',
            "line 4): [sites.a]: max_connections must be",
        ),
        ("[sites.a]\nmax_connections = 2\n", "[sites.a]: mx must be a non-empty list"),
        ('[sites.a]\nmx = ["bad host/x"]\n', "line 2): [sites.a]: 'bad host/x' is no host name"),
        ("[throttle]\nrate_factor = 1.5\n", "line 2): [throttle]: rate_factor must be in (0, 1]"),
        ("[throttle]\ncodes = [550]\n", "[throttle]: codes must be 4xx reply codes"),
        ("[limits]\nmax_connections = 2\n", "line 1): unknown section [limits]"),
        ('[default]\nidle_seconds = "soon"\n', "line 2): [default]: idle_seconds must be a number"),
    ],
)
def test_a_bad_shaping_file_is_a_config_error_naming_the_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_shaping(text, "REMAILS_SHAPING_FILE x.toml")
    assert str(caught.value).startswith("REMAILS_SHAPING_FILE x.toml")
    assert message in str(caught.value)


def test_an_unreadable_shaping_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REMAILS_SHAPING_FILE: cannot read"):
        load_shaping(Limits(), tmp_path / "missing.toml")


def test_421_4_7_x_and_the_configured_texts_throttle_but_not_other_replies() -> None:
    t = Throttle(patterns=("try again later", "rate limit"))
    assert is_throttling(421, "4.7.0", "Try again later, closing connection", t)
    assert is_throttling(421, None, "service not available", t)
    assert is_throttling(451, "4.7.1", "Temporarily deferred", t)
    assert is_throttling(
        450, "4.2.1", "The user you are trying to contact is receiving mail at a RATE LIMIT", t
    )
    assert not is_throttling(451, "4.3.0", "local problem", t)
    assert not is_throttling(550, "5.7.1", "rate limit exceeded, permanently", t)  # 5xx is no throttle
    assert not is_throttling(None, "4.7.5", "MTA-STS policy, try again later", t)  # our own failure
    assert not is_throttling(250, "2.0.0", "ok", t)


def test_a_throttle_suspends_halves_the_rate_with_a_floor_and_restores_per_clean_window() -> None:
    t = Throttle(suspend_seconds=60, rate_factor=0.5, rate_floor=0.2, restore_step=0.1)
    fresh = RateState()
    first = after_throttle(fresh, now=1000.0, window=60.0, throttle=t)
    assert first == RateState(factor=0.5, changed_at=1060.0, suspended_until=1060.0)
    # During the suspension nothing is restored; afterwards +0.1 per whole clean window.
    assert effective_factor(first, 1059.0, 60.0, t) == 0.5
    assert effective_factor(first, 1060.0 + 59, 60.0, t) == 0.5
    assert effective_factor(first, 1060.0 + 60, 60.0, t) == pytest.approx(0.6)
    assert effective_factor(first, 1060.0 + 5 * 60, 60.0, t) == 1.0
    assert effective_factor(first, 1060.0 + 50 * 60, 60.0, t) == 1.0
    # Throttled again during the first suspension: the factor halves again, the floor holds.
    second = after_throttle(first, now=1010.0, window=60.0, throttle=t)
    assert second.factor == 0.25 and second.suspended_until == 1070.0
    third = after_throttle(second, now=1011.0, window=60.0, throttle=t)
    assert third.factor == 0.2


def test_window_limits_scale_the_per_minute_rate_and_never_reach_zero() -> None:
    t = Throttle(rate_floor=0.1)
    assert window_limit(600, 1.0, 60.0, t) == 600
    assert window_limit(600, 0.5, 60.0, t) == 300
    assert window_limit(600, 0.01, 60.0, t) == 60  # the floor
    assert window_limit(600, 1.0, 1.0, t) == 10  # a one-second window in tests
    assert window_limit(1, 0.1, 1.0, t) == 1
    assert grant(10, limit=25, used=20) == 5
    assert grant(10, limit=25, used=30) == 0
    assert chunk_size(60_000) == 100 and chunk_size(100) == 5 and chunk_size(3) == 1


def test_budget_is_taken_in_chunks_counted_per_window_and_none_while_suspended() -> None:
    t = Throttle()
    limits = Limits(max_deliveries_per_minute=1200)  # 20 per one-second window
    state = SiteState(now=100.5, window_start=99.0, taken=50)  # an old window: starts over
    state, take = take_budget(state, limits, 1.0, t)
    assert take.granted == 1 and take.window_end == 101.0  # chunk: 20 // 20
    state = SiteState(now=100.6, window_start=100.0, taken=19)
    state, take = take_budget(state, limits, 1.0, t)
    assert (take.granted, state.taken) == (1, 20)
    _, take = take_budget(state, limits, 1.0, t)
    assert take.granted == 0  # the window is used up
    suspended, after = throttle_site(SiteState(now=100.0), 1.0, Throttle(suspend_seconds=5))
    assert suspended.suspended_until == 105.0 == after.suspended_until
    _, take = take_budget(dataclasses.replace(suspended, now=103.0), limits, 1.0, t)
    assert take.granted == 0 and take.suspended_until == 105.0
    _, take = take_budget(dataclasses.replace(suspended, now=105.2), limits, 1.0, t)
    assert take.granted == 1 and take.factor == 0.5
