"""The cyclic garbage collector, kept off the call path.

CPython's automatic collections stop the event loop while they walk every young object
that is still alive. A B2BUA keeps each call's transactions for up to 32 s after the call
(RFC 3261 timers D, J, K), so at a few hundred calls per second the collector walks
hundreds of thousands of objects: measured here, single pauses of 50 ms in the youngest
generation and 480 ms in the middle one, each a burst of INVITE retransmissions and
load-shedding 503s. Call handling makes no reference cycles (a 300 CPS run with the
collector off left none), so reference counting frees everything; only error paths
(exceptions with tracebacks) may leave cycles behind.

So the automatic collector is off, and this task collects when it costs no calls: when
the node is quiet (few calls in progress), or at the latest every `force_after` seconds
so that memory held by rare cycles stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("calltrackd.gc")


class CollectorPolicy:
    def __init__(self, active_calls: Callable[[], int], *, interval: float = 30.0,
                 quiet_calls: int = 20, force_after: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.active_calls = active_calls
        self.interval = interval
        self.quiet_calls = quiet_calls
        self.force_after = force_after
        self.clock = clock
        self.last = clock()
        self.collections = 0

    def due(self, now: float, active: int) -> bool:
        """Collect now? When quiet, or when the last collection is too long ago."""
        return active <= self.quiet_calls or now - self.last >= self.force_after

    def start(self) -> None:
        """Turn the automatic collector off (after startup objects were frozen)."""
        gc.disable()

    def collect(self) -> None:
        t0 = time.perf_counter()
        found = gc.collect()
        self.last = self.clock()
        self.collections += 1
        pause = time.perf_counter() - t0
        if found or pause > 0.05:
            log.info("gc collected", objects=found, pause_ms=round(pause * 1000, 1))

    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
                if not stop.is_set() and self.due(self.clock(), self.active_calls()):
                    self.collect()
        finally:
            gc.enable()
