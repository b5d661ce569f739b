"""Load shedding: when the event loop falls behind, new calls are refused at once (503
with Retry-After) instead of queueing, so every accepted call keeps its timers and the
dispatcher sends the excess to another node.

The signal is the loop's own lag: a timer asks to run every `interval` seconds and
measures how late it runs. A smoothed lag above `high` turns shedding on; it turns off
again below `low` (hysteresis, so the node does not flap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

_ALPHA = 0.15  # weight of the newest lag sample


class LoopLagMonitor:
    def __init__(self, *, interval: float = 0.01, high: float = 0.015, low: float = 0.005,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.high = high
        self.low = low
        self.clock = clock
        self.lag = 0.0  # smoothed, seconds
        self.overloaded = False
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._expected = self.clock() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, lag: float) -> None:
        """Fold one lag sample in (exposed for tests)."""
        # slow enough that one stall (a GC pass, a disk hiccup) of up to 100 ms does not
        # shed, fast enough that a loop falling behind for good sheds within ~0.2 s
        self.lag = (1 - _ALPHA) * self.lag + _ALPHA * max(0.0, lag)
        if not self.overloaded and self.lag > self.high:
            self.overloaded = True
        elif self.overloaded and self.lag < self.low:
            self.overloaded = False

    def _tick(self) -> None:
        now = self.clock()
        self.observe(now - self._expected)
        self._expected = now + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)
