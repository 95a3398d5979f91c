"""Per-site delivery shaping, KumoMTA's model: a destination *site* is the set of MX hosts a
domain resolves to, and each (egress IP, site) has its limits — connections, messages per
connection, deliveries per minute, connection idle time — and reacts to throttling replies by
suspending that (IP, site) and lowering its rate, then restoring it slowly.

Everything here is pure: the site name, the TOML shaping file (`REMAILS_SHAPING_FILE`, beside
the one shipped in this package), which limits apply to a site, whether a reply throttles, and
the rate arithmetic. `remails_sender_node.site_queue` does the waiting; `remails.db.shaping` stores the
state every process sharing an IP sees.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from remails.db.shaping import SiteState
from remails.errors import ConfigError

__all__ = [
    "DEFAULT_FILE",
    "Limits",
    "RateState",
    "ShapingConfig",
    "SiteRule",
    "Take",
    "Throttle",
    "after_throttle",
    "chunk_size",
    "effective_factor",
    "grant",
    "is_throttling",
    "limits_for",
    "load_shaping",
    "parse_shaping",
    "pattern_matches",
    "site_name",
    "take_budget",
    "throttle_site",
    "window_limit",
]

DEFAULT_FILE = "shaping.toml"  # shipped inside this package
MAX_SITE_NAME = 400  # a site of very many MX hosts keeps a bounded key


@dataclass(frozen=True)
class Limits:
    """What one egress IP may do to one site."""

    max_connections: int = 10
    max_messages_per_connection: int = 100
    max_deliveries_per_minute: int = 60_000
    idle_seconds: float = 5.0


@dataclass(frozen=True)
class SiteRule:
    """A `[sites.NAME]` entry: MX host patterns and the limits it changes."""

    name: str
    mx: tuple[str, ...]
    limits: Mapping[str, int | float]  # only the keys the entry sets


@dataclass(frozen=True)
class Throttle:
    """The `[throttle]` section: which replies throttle and how the (IP, site) reacts."""

    codes: tuple[int, ...] = (421,)
    enhanced: tuple[str, ...] = ("4.7.",)  # prefixes of enhanced status codes of 4xx replies
    patterns: tuple[str, ...] = (
        "try again later",
        "rate limit",
        "too many connections",
        "too many messages",
        "temporarily deferred",
    )
    suspend_seconds: float = 60.0
    rate_factor: float = 0.5  # the rate is multiplied by this on each throttle…
    rate_floor: float = 0.1  # …but never below this share of the configured rate
    restore_step: float = 0.1  # share of the configured rate given back per clean window


@dataclass(frozen=True)
class ShapingConfig:
    defaults: Limits = field(default_factory=Limits)
    sites: tuple[SiteRule, ...] = ()  # first match wins: the user's entries come first
    throttle: Throttle = field(default_factory=Throttle)


_LIMIT_KEYS: dict[str, type] = {
    "max_connections": int,
    "max_messages_per_connection": int,
    "max_deliveries_per_minute": int,
    "idle_seconds": float,
}
_THROTTLE_KEYS: dict[str, type] = {
    "codes": list,
    "enhanced": list,
    "patterns": list,
    "suspend_seconds": float,
    "rate_factor": float,
    "rate_floor": float,
    "restore_step": float,
}
_PATTERN = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


# -- sites --------------------------------------------------------------------------------------


def _host(name: str) -> str:
    return name.strip().rstrip(".").lower()


def site_name(mx_hosts: Iterable[str]) -> str:
    """The site of a destination: its MX host names, lowercased, sorted and joined, so
    domains served by the same MX set (gmail.com, googlemail.com) share one site."""
    names = sorted({_host(h) for h in mx_hosts if _host(h)})
    joined = ",".join(names)
    if len(joined) <= MAX_SITE_NAME:
        return joined
    return joined[:MAX_SITE_NAME].rpartition(",")[0] + ",…"


def pattern_matches(host: str, pattern: str) -> bool:
    """`*.google.com` matches every name below google.com (any depth); anything else only
    the literal name."""
    host, pattern = _host(host), _host(pattern)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def limits_for(config: ShapingConfig, mx_hosts: Iterable[str]) -> tuple[Limits, str | None]:
    """The limits of a site and the name of the entry that set them (None: the defaults).
    An entry matches when any of its patterns matches any of the site's MX hosts."""
    hosts = [_host(h) for h in mx_hosts]
    for rule in config.sites:
        if any(pattern_matches(h, p) for h in hosts for p in rule.mx):
            return dataclasses.replace(config.defaults, **cast(dict[str, Any], rule.limits)), rule.name
    return config.defaults, None


# -- the shaping file -----------------------------------------------------------------------------


class _Bad(ValueError):
    """A bad entry: the message, and the section and key it is about (for the line)."""

    def __init__(self, message: str, section: str, key: str | None = None) -> None:
        super().__init__(message)
        self.section, self.key = section, key


def _line_of(text: str, section: str, key: str | None) -> str:
    """`line N` of the key inside its section (or of the section's header), for error
    messages: tomllib keeps no positions."""
    lines = text.splitlines()
    header = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
    if header is None:
        return "the file"
    if key is not None:
        for i in range(header + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i]):
                return f"line {i + 1}"
    return f"line {header + 1}"


def _value(where: str, key: str, value: Any, kind: type) -> Any:
    try:
        return _checked(where, key, value, kind)
    except ValueError as exc:
        raise _Bad(str(exc), where.strip("[]"), key) from None


def _checked(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}: {key} must be a number ≥ 0, got {value!r}")
        return float(value)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} must be a list, got {value!r}")
    return value


def _limits(where: str, table: Mapping[str, Any], extra: Iterable[str] = ()) -> dict[str, int | float]:
    allowed = set(_LIMIT_KEYS) | set(extra)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _Bad(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})",
            where.strip("[]"),
            unknown[0],
        )
    values = {k: _value(where, k, v, _LIMIT_KEYS[k]) for k, v in table.items() if k in _LIMIT_KEYS}
    if values.get("idle_seconds") == 0:
        raise _Bad(f"{where}: idle_seconds must be > 0", where.strip("[]"), "idle_seconds")
    return values


def _throttle(table: Mapping[str, Any], base: Throttle) -> Throttle:
    where = "[throttle]"
    unknown = sorted(set(table) - set(_THROTTLE_KEYS))
    if unknown:
        known = ", ".join(sorted(_THROTTLE_KEYS))
        raise _Bad(f"{where}: unknown key {unknown[0]!r} (known: {known})", "throttle", unknown[0])
    values: dict[str, Any] = {}
    for key, raw in table.items():
        value = _value(where, key, raw, _THROTTLE_KEYS[key])
        if key == "codes":
            if not all(isinstance(c, int) and 400 <= c <= 499 for c in value):
                raise _Bad(f"{where}: codes must be 4xx reply codes, got {raw!r}", "throttle", key)
            value = tuple(value)
        elif key in ("enhanced", "patterns"):
            if not all(isinstance(s, str) and s.strip() for s in value):
                raise _Bad(f"{where}: {key} must be a list of non-empty strings", "throttle", key)
            value = tuple(s.strip().lower() for s in value)
        elif key in ("rate_factor", "rate_floor", "restore_step") and not 0 < value <= 1:
            raise _Bad(f"{where}: {key} must be in (0, 1], got {raw!r}", "throttle", key)
        values[key] = value
    return dataclasses.replace(base, **values)


def parse_shaping(text: str, source: str, base: ShapingConfig | None = None) -> ShapingConfig:
    """A shaping file on top of `base` (the defaults from settings, or the shipped file):
    `[default]` changes the default limits, `[throttle]` the reaction to throttling replies,
    `[sites.NAME]` adds an entry (or replaces the base's entry of that name; its own entries
    are tried before the base's). A bad file raises ConfigError naming the file, line and key."""
    base = base or ShapingConfig()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        unknown = sorted(set(data) - {"default", "throttle", "sites"})
        if unknown:
            known = "[default], [throttle], [sites.NAME]"
            raise _Bad(f"unknown section [{unknown[0]}] (known: {known})", unknown[0])
        defaults = base.defaults
        if "default" in data:
            changes: dict[str, Any] = _limits("[default]", _table(data["default"], "default"))
            defaults = dataclasses.replace(defaults, **changes)
        throttle = base.throttle
        if "throttle" in data:
            throttle = _throttle(_table(data["throttle"], "throttle"), throttle)
        own: list[SiteRule] = []
        for name, entry in _table(data.get("sites", {}), "sites").items():
            section = f"sites.{name}"
            table = _table(entry, section)
            mx = table.get("mx")
            if not isinstance(mx, list) or not mx or not all(isinstance(p, str) for p in mx):
                message = f"[{section}]: mx must be a non-empty list of host names or *.suffix patterns"
                raise _Bad(message, section, "mx")
            patterns = tuple(_host(p) for p in mx)
            for p in patterns:
                if not _PATTERN.match(p):
                    raise _Bad(f"[{section}]: {p!r} is no host name or *.suffix pattern", section, "mx")
            own.append(SiteRule(name, patterns, _limits(f"[{section}]", table, extra=("mx",))))
    except _Bad as exc:
        raise ConfigError(f"{source} ({_line_of(text, exc.section, exc.key)}): {exc}") from None
    names = {r.name for r in own}
    sites = tuple(own) + tuple(r for r in base.sites if r.name not in names)
    return ShapingConfig(defaults, sites, throttle)


def _table(value: Any, section: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"[{section}] must be a table", section)
    return value


def load_shaping(defaults: Limits, user_file: Path | None) -> ShapingConfig:
    """The shipped file, then the user's on top, over the default limits from settings."""
    shipped = resources.files("remails_sender_node").joinpath(DEFAULT_FILE).read_text(encoding="utf-8")
    config = parse_shaping(shipped, f"sender_node/{DEFAULT_FILE}", ShapingConfig(defaults=defaults))
    if user_file is None:
        return config
    try:
        text = user_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"REMAILS_SHAPING_FILE: cannot read {user_file}: {exc.strerror}") from None
    return parse_shaping(text, f"REMAILS_SHAPING_FILE {user_file}", config)


# -- throttling replies ---------------------------------------------------------------------------


def is_throttling(code: int | None, enhanced: str | None, text: str, throttle: Throttle) -> bool:
    """A reply the site uses to slow us down: one of the codes (421), a 4xx with one of the
    enhanced prefixes (4.7.x), or a 4xx whose text has one of the patterns. Only replies a
    server gave count; our own local failures (no code) never suspend a site."""
    if code is None or not 400 <= code <= 499:
        return False
    if code in throttle.codes:
        return True
    if enhanced is not None and any(enhanced.startswith(p) for p in throttle.enhanced):
        return True
    lowered = text.lower()
    return any(p in lowered for p in throttle.patterns)


# -- the rate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateState:
    """The stored state of one (IP, site): its rate factor (share of the configured rate) as of
    `changed_at`, from when it is restored window by window, and its suspension."""

    factor: float = 1.0
    changed_at: float = 0.0  # epoch seconds
    suspended_until: float = 0.0  # epoch seconds; 0: never


def effective_factor(state: RateState, now: float, window: float, throttle: Throttle) -> float:
    """The factor now: the stored one plus `restore_step` for each whole clean window since it
    was set (restoring starts when the suspension ends), at most 1."""
    if state.factor >= 1.0:
        return 1.0
    clean = max(0, math.floor((now - state.changed_at) / window))
    return min(1.0, state.factor + throttle.restore_step * clean)


def window_limit(configured_per_minute: int, factor: float, window: float, throttle: Throttle) -> int:
    """Deliveries allowed in one window: the configured per-minute rate scaled to the window and
    by the factor, never below the floor share, at least one."""
    per_window = configured_per_minute * window / 60.0
    return max(1, math.floor(per_window * max(factor, throttle.rate_floor)))


def grant(want: int, limit: int, used: int) -> int:
    """How many of `want` deliveries the window still has."""
    return max(0, min(want, limit - used))


def chunk_size(limit: int, holders: int = 20) -> int:
    """How much budget one process takes at a time: a small share of the window's limit, so
    several processes share it without a database round trip per message."""
    return max(1, min(100, limit // holders))


def after_throttle(state: RateState, now: float, window: float, throttle: Throttle) -> RateState:
    """A throttling reply: suspended for `suspend_seconds` (a longer suspension in force
    stays), the factor in force times `rate_factor` (never below the floor), restored from
    the end of the suspension."""
    until = max(state.suspended_until, now + throttle.suspend_seconds)
    current = effective_factor(state, now, window, throttle)
    factor = max(throttle.rate_floor, current * throttle.rate_factor)
    return RateState(factor=factor, changed_at=until, suspended_until=until)


# -- decisions on the stored state of one (IP, site) -------------------------------------------------


@dataclass(frozen=True)
class Take:
    """Budget granted to this process: deliveries it may start before `window_end`."""

    granted: int
    window_end: float
    suspended_until: float
    factor: float


def _rate(state: SiteState) -> RateState:
    return RateState(state.rate_factor, state.rate_changed_at, state.suspended_until)


def take_budget(
    state: SiteState, limits: Limits, window: float, throttle: Throttle
) -> tuple[SiteState, Take]:
    """A chunk of the current window's deliveries (none while suspended); the window's count
    starts over when a new window begins. A fully restored factor is stored as 1."""
    start = math.floor(state.now / window) * window
    used = state.taken if abs(state.window_start - start) < 1e-3 else 0  # stored to the microsecond
    factor = effective_factor(_rate(state), state.now, window, throttle)
    if state.suspended_until > state.now:
        return dataclasses.replace(state, window_start=start, taken=used), Take(
            0, start + window, state.suspended_until, factor
        )
    limit = window_limit(limits.max_deliveries_per_minute, factor, window, throttle)
    granted = grant(chunk_size(limit), limit, used)
    new = dataclasses.replace(state, window_start=start, taken=used + granted)
    if factor >= 1.0 and state.rate_factor < 1.0:
        new = dataclasses.replace(new, rate_factor=1.0, rate_changed_at=state.now)
    return new, Take(granted, start + window, state.suspended_until, factor)


def throttle_site(state: SiteState, window: float, throttle: Throttle) -> tuple[SiteState, RateState]:
    """A throttling reply, applied to the stored state (see `after_throttle`)."""
    after = after_throttle(_rate(state), state.now, window, throttle)
    new = dataclasses.replace(
        state,
        rate_factor=after.factor,
        rate_changed_at=after.changed_at,
        suspended_until=after.suspended_until,
    )
    return new, after
