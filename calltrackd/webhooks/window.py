"""How many requests an endpoint gets at once: an AIMD window, like TCP's congestion window.

Pure (times are passed in). The window starts at the configured initial concurrency and
grows while rows wait for a slot: by one per acknowledged request below the threshold
(slow start: it doubles every round trip), by one per window of acknowledgements above
it. It never passes `limit` (`[webhooks] concurrency`, or the destination's own). An
answer slower than `SLOW` times the fastest seen (plus 50 ms) holds it: the receiver is
queueing, more requests in flight would only wait there. A failure (5xx, 429, timeout,
connection error) halves it and sets the threshold there, at most once per round trip:
the requests sent before that decrease answer for the same trouble.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SLOW", "AdaptiveWindow"]

SLOW: Final = 2.0


class AdaptiveWindow:
    __slots__ = ("last_cut", "limit", "min_rtt", "threshold", "window")

    def __init__(self, initial: float, limit: int) -> None:
        self.limit = limit
        self.window = float(min(initial, limit))
        self.threshold = float(limit)  # slow start below it
        self.min_rtt = float("inf")
        self.last_cut = float("-inf")  # when the window was last halved

    @property
    def size(self) -> int:
        return min(int(self.window), self.limit)

    def acknowledged(self, rtt: float, waiting: bool) -> None:
        """A request was acknowledged after `rtt` seconds; `waiting`: rows waited for it."""
        self.min_rtt = min(self.min_rtt, rtt)
        if not waiting or rtt > SLOW * self.min_rtt + 0.05:
            return
        if self.window < self.threshold:
            self.window += 1.0
        else:
            self.window += 1.0 / self.window
        self.window = min(self.window, float(self.limit))

    def failed(self, started: float, now: float) -> None:
        """A request sent at `started` failed at `now`."""
        if started < self.last_cut:
            return
        self.last_cut = now
        self.window = max(1.0, self.window / 2)
        self.threshold = max(2.0, self.window)
