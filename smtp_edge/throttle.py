"""Failed-AUTH throttling per client IP and per username, in a sliding window.

An attempt is reserved *before* the password lookup, counting as a failure until it succeeds:
the lookup awaits the database, and concurrent attempts that merely checked first and counted
after would all pass the check together.
"""

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

    def reserve(self, keys: list[str], now: float) -> bool:
        """Check and count in one step (no await between): False when blocked. A reserved
        attempt counts as a failure until `succeeded` takes it back."""
        if self.blocked(keys, now):
            return False
        self.record_failure(keys, now)
        return True

    def succeeded(self, keys: list[str], reserved_at: float) -> None:
        """The attempt reserved at `reserved_at` was a good login: it is not a failure."""
        for key in keys:
            times = self._failures.get(key)
            if times is not None and reserved_at in times:
                times.remove(reserved_at)
