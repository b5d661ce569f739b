"""When to try a failed webhook delivery again, and when to give up.

The wait itself is the daemon's one `Backoff` (calltrackd/backoff.py, re-exported here);
`RetryPolicy` around it decides what is retried and for how long. The webhook contract
asks for retries on network errors and non-2xx answers for at least 24 h; 2xx is done.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final

from ..backoff import Backoff

__all__ = [
    "RETRY_AFTER_STATUSES",
    "Backoff",
    "ExponentialJitterBackoff",
    "RetryPolicy",
    "is_success",
    "parse_retry_after",
]

# Statuses whose Retry-After we honour: the receiver told us when it can take more.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


class ExponentialJitterBackoff(Backoff):
    """`Backoff` with equal jitter and the webhook defaults: the n-th failure waits
    2.5-5 s, then 5-10 s, ... up to 30-60 min (kept by the name callers know)."""

    def __init__(self, base: float = 5.0, cap: float = 3600.0,
                 rng: Callable[[], float] = random.random) -> None:
        super().__init__(base, cap, jitter=True, rng=rng)


def is_success(status: int) -> bool:
    """2xx acknowledges a delivery; anything else is retried (3xx too: we follow no redirect)."""
    return 200 <= status < 300


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from `now` that a `Retry-After` header asks for (RFC 9110 §10.2.3), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a "-0000" zone parses as naive
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry with `backoff` until `max_age` seconds have passed since the event was created.

    The last attempt may be scheduled a little past `max_age`: giving up is decided after an
    attempt fails, so an event is retried for *at least* `max_age`.
    """

    backoff: Backoff = field(default_factory=ExponentialJitterBackoff)
    max_age: float = 86400.0
    # A Retry-After longer than this is not trusted further (a misconfigured receiver asking
    # for a week must not silently park every event until it expires).
    max_retry_after: float = 3600.0

    def next_attempt_at(
        self,
        *,
        created_at: float,
        attempts: int,
        now: float,
        retry_after: float | None = None,
    ) -> float | None:
        """When to try again after `attempts` failed attempts, or None to give up."""
        if now - created_at >= self.max_age:
            return None
        delay = self.backoff.compute(attempts)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return now + delay
