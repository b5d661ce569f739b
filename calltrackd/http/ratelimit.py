"""A token bucket per client address for session creation (pure: time is passed in).

A bot that opens sessions in a loop would otherwise drain a pool; over the limit a
visitor still gets an answer, the default number, so a real visitor behind a busy NAT
loses tracking, never the phone number.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → tokens, t

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str, now: float) -> bool:
        """Take one token for `key`; False when its bucket is empty."""
        if not self.enabled:
            return True
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # forget the longest-idle client
        return allowed
