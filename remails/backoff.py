"""Exponential backoff with jitter: one pure function used by the bus, deliveries and webhooks."""

from __future__ import annotations

__all__ = ["exponential_delay"]


def exponential_delay(attempt: int, *, base: float, cap: float, jitter: float = 0.0) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    base·2^(attempt-1), capped at `cap`, then spread by `jitter` ∈ [-1, 1] times 10 % so that
    many failures at once do not retry in lock-step.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    delay: float = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return max(0.0, delay * (1.0 + 0.1 * max(-1.0, min(1.0, jitter))))
