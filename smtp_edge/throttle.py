"""Failed-AUTH throttling per client IP and per username, in a sliding window.

An attempt is reserved *before* the password lookup: the lookup awaits the database, and
concurrent attempts that merely checked first and counted after would all pass together. A
reserved attempt is in flight until it settles as a success or a failure. While the failures
plus the attempts in flight reach the limit, a new attempt waits for one of them to settle
rather than being refused: concurrent good logins (an application opening many connections)
queue for a moment, and guesses never reach the password check more than `max_failures` times.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Literal

__all__ = ["AuthThrottle", "Verdict"]

Verdict = Literal["go", "wait", "blocked"]


class AuthThrottle:
    """Failures and attempts in flight per key. The clock is passed in, so each decision is a
    plain function of the recorded times."""

    def __init__(self, max_failures: int, window: float, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._in_flight: Counter[str] = Counter()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def _failed(self, key: str, now: float) -> int:
        return len(self._recent(key, now)) if key in self._failures else 0

    def verdict(self, keys: list[str], now: float) -> Verdict:
        """blocked: a key has its failures; wait: it would have them if the attempts in flight
        failed; go: the attempt may be reserved."""
        if any(self._failed(k, now) >= self.max_failures for k in keys):
            return "blocked"
        if any(self._failed(k, now) + self._in_flight[k] >= self.max_failures for k in keys):
            return "wait"
        return "go"

    def blocked(self, keys: list[str], now: float) -> bool:
        return self.verdict(keys, now) == "blocked"

    def reserve(self, keys: list[str], now: float) -> Verdict:
        """Decide and, on `go`, count the attempt in flight — in one step, with no await."""
        verdict = self.verdict(keys, now)
        if verdict == "go":
            self._in_flight.update(keys)
        return verdict

    def settle(self, keys: list[str], now: float, *, failed: bool) -> None:
        """A reserved attempt ended: no longer in flight, and recorded when it failed."""
        self._in_flight.subtract(keys)
        for key in keys:
            if self._in_flight[key] <= 0:
                del self._in_flight[key]
        if failed:
            self.record_failure(keys, now)

    def record_failure(self, keys: list[str], now: float) -> None:
        if len(self._failures) >= self.max_keys:  # bound memory under a spray of usernames
            self._failures.clear()
        for key in keys:
            self._recent(key, now).append(now)
