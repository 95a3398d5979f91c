"""Failed-AUTH throttling per client IP and per username, in a sliding window."""

from __future__ import annotations

from collections import defaultdict, deque

__all__ = ["AuthThrottle"]


class AuthThrottle:
    """Counts failures per key; a key with `max_failures` in the last `window` seconds is blocked.

    The clock is passed in, so the decision is a plain function of the recorded times.
    """

    def __init__(self, max_failures: int, window: float, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, keys: list[str], now: float) -> bool:
        return any(len(self._recent(k, now)) >= self.max_failures for k in keys if k in self._failures)

    def record_failure(self, keys: list[str], now: float) -> None:
        if len(self._failures) >= self.max_keys:  # bound memory under a spray of usernames
            self._failures.clear()
        for key in keys:
            self._recent(key, now).append(now)
