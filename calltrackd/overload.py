"""Load shedding: when the event loop falls behind, new calls are refused at once (503
with Retry-After) instead of queueing, so every accepted call keeps its timers and the
dispatcher sends the excess to another node.

Two signals, either of which sheds:

- the loop's own lag: a timer asks to run every `interval` seconds and measures how late
  it runs. A smoothed lag above `high` turns shedding on; it turns off again below `low`
  (hysteresis, so the node does not flap). This catches a loop that is stalled.
- the time a datagram waits in the SIP socket's receive queue (`QueueDelayProbe`). A loop
  that is merely saturated runs its timers on time (uvloop reads a bounded batch of
  datagrams per turn), while the kernel queue in front of it grows by seconds: at twice
  the sustainable rate the lag stayed under 1 ms and INVITEs waited 16 s for their 100
  Trying. So a tiny datagram stamped with the time is sent to our own SIP socket; it
  waits in the same queue as the INVITEs, and when it comes out its age is the queueing
  delay. Shedding starts when that delay stays above `queue_high` for `queue_hold`
  seconds (a single stall that the loop then catches up on sheds nothing) and ends when
  a probe comes back under `queue_low`.

The smoothed lag hides a single stall, so each tick's own lag is kept as well, for the
metrics: the longest in the last minute (`max_lag`: six slots of 10 s, so a stall stays
visible for 50 to 60 s, to every scraper) and a histogram (`lag_counts` per bucket of
`LAG_BUCKETS`, `lag_sum`): a few list operations per tick, no lock.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable

from .transport.probe import QueueDelayProbe

_ALPHA = 0.15  # weight of the newest lag sample
# upper bounds of the per-tick lag histogram, seconds (a last bucket, +Inf, follows)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOT = 10.0  # seconds per slot of the longest-lag window
_SLOTS = 6  # slots in the window: a minute


class LoopLagMonitor:
    def __init__(self, *, interval: float = 0.01, high: float = 0.015, low: float = 0.005,
                 queue_high: float = 0.05, queue_low: float = 0.01, queue_hold: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.high = high
        self.low = low
        self.queue_high = queue_high
        self.queue_low = queue_low
        self.queue_hold = queue_hold
        self.clock = clock
        self.lag = 0.0  # smoothed, seconds
        self.queue_delay = 0.0  # seconds, the latest estimate over all probes
        self.probes: list[QueueDelayProbe] = []
        self.overloaded = False
        self._lagging = False
        self._queueing = False
        self._queue_high_since: float | None = None
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)  # ticks per bucket (not cumulative)
        self.lag_sum = 0.0  # seconds, over all ticks
        self._slot_ids = [-1] * _SLOTS  # which 10-s slot (time // _SLOT) each entry holds
        self._slot_max = [0.0] * _SLOTS  # the longest tick lag in that slot

    def start(self) -> None:
        self._expected = self.clock() + self.interval
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def observe(self, lag: float) -> None:
        """Fold one lag sample in (exposed for tests)."""
        # slow enough that one stall (a GC pass, a disk hiccup) of up to 100 ms does not
        # shed, fast enough that a loop falling behind for good sheds within ~0.2 s
        self.lag = (1 - _ALPHA) * self.lag + _ALPHA * max(0.0, lag)
        if not self._lagging and self.lag > self.high:
            self._lagging = True
        elif self._lagging and self.lag < self.low:
            self._lagging = False
        self.overloaded = self._lagging or self._queueing

    def record(self, lag: float, now: float) -> None:
        """One tick's own lag, for the histogram and the longest-lag window (exposed for
        tests; `observe` is the smoothed signal the shedding follows)."""
        lag = max(0.0, lag)  # a timer may run a hair early
        self.lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.lag_sum += lag
        n = int(now // _SLOT)
        i = n % _SLOTS
        if self._slot_ids[i] != n:
            self._slot_ids[i] = n
            self._slot_max[i] = lag
        elif lag > self._slot_max[i]:
            self._slot_max[i] = lag

    def max_lag(self) -> float:
        """The longest lag of one tick in the last minute (the slots of the last 60 s;
        the current one has run for 0 to 10 s), seconds."""
        oldest = int(self.clock() // _SLOT) - _SLOTS
        return max((m for n, m in zip(self._slot_ids, self._slot_max, strict=True)
                    if n > oldest), default=0.0)

    def observe_queue(self, delay: float, now: float) -> None:
        """Fold one queueing-delay estimate in (exposed for tests)."""
        self.queue_delay = delay
        if delay > self.queue_high:
            if self._queue_high_since is None:
                self._queue_high_since = now
            if now - self._queue_high_since >= self.queue_hold:
                self._queueing = True
        else:
            self._queue_high_since = None
            if delay < self.queue_low:
                self._queueing = False
        self.overloaded = self._lagging or self._queueing

    def _tick(self) -> None:
        now = self.clock()
        if self.probes:
            self.observe_queue(max(p.tick(now) for p in self.probes), now)
        lag = now - self._expected
        self.record(lag, now)
        self.observe(lag)
        self._expected = now + self.interval
        if self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._tick)
