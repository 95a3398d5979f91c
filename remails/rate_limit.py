"""A token bucket per key (an organization, a client address): `rate` per second, bursts up to
`burst`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["TokenBuckets"]


@dataclass
class TokenBuckets:
    rate: float
    burst: int
    max_keys: int = 100_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key → (tokens, at)

    def take(self, key: str, now: float) -> int:
        """0 when allowed; otherwise the whole seconds to wait (for Retry-After)."""
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bound memory; a reset only grants a fresh burst
            self._buckets[key] = (tokens - 1.0, now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def refund(self, key: str) -> None:
        """Give back a token taken for an attempt that turned out not to count."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            tokens, at = bucket
            self._buckets[key] = (min(float(self.burst), tokens + 1.0), at)
