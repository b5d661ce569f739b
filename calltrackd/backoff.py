"""How long to wait after consecutive failures: the one backoff of the daemon.

In the manner of redis-py (`redis/backoff.py`): a tiny object with
`compute(failures) -> seconds`; the loop around it decides what is retried and for how
long (`webhooks/backoff.py`'s `RetryPolicy` for webhook redelivery). The n-th consecutive
failure (1 for the first) waits d = min(cap, base * 2**(n-1)); with `jitter`, a random
time in [d/2, d] instead (*equal* jitter: a receiver that is down is never hit again at
once, while the random half still spreads a burst of failures that happened together).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

__all__ = ["Backoff"]

# 2**62 is far past any cap; bounding the exponent keeps float maths from overflowing.
_MAX_EXPONENT: Final = 62


class Backoff:
    def __init__(self, base: float, cap: float, *, jitter: bool = False,
                 rng: Callable[[], float] = random.random) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rng = rng

    def ceiling(self, failures: int) -> float:
        """The upper bound d of the wait after the `failures`-th failure."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def compute(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1 for the first)."""
        d = self.ceiling(failures)
        if not self.jitter:
            return d
        return d / 2 + d / 2 * self._rng()

    def __repr__(self) -> str:
        return f"Backoff(base={self.base:g}, cap={self.cap:g}, jitter={self.jitter})"
