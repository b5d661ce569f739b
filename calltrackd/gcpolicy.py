"""The cyclic garbage collector, kept to short pauses.

CPython's collector stops the event loop while it walks the objects of the generations it
collects. A B2BUA keeps each call's transactions for up to 32 s after the call (RFC 3261
timers D, J, K), so the oldest generation holds hundreds of thousands of live objects at
a few hundred calls per second, and walking them takes hundreds of milliseconds: a burst
of INVITE retransmissions and 503s. Walking only the young is cheap.

Call handling makes no reference cycles (legs refer to their call weakly, timer handles
are dropped once they ran; tests/integration/test_memory.py checks that 1,000 calls leave
no cyclic garbage), so reference counting frees every call, and the collector is only a
safety net for rare cycles (error paths: exceptions with tracebacks). Hence:

- start-up objects (modules, configuration) are frozen (`gc.freeze()` in app.py): no
  collection ever walks them;
- the young and the middle generations are collected automatically, small and often
  (`young` allocations, every `middle` young collections): each pass walks at most a few
  thousand objects, well under a millisecond;
- the oldest generation is never collected automatically; this task collects it when
  the node is quiet (at most `quiet_calls` calls up, at most every `interval` s), and
  under unbroken load at the latest every `full_after` seconds, so that the memory held
  by rare cycles stays bounded.

Every pause is measured (gc.callbacks); one over `slow` seconds is logged with its
generation, and `max_pause` keeps the longest for the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("calltrackd.gc")

NEVER = 1 << 30  # an automatic threshold no counter reaches


class CollectorPolicy:
    def __init__(self, active_calls: Callable[[], int], *, young: int = 1000,
                 middle: int = 10, interval: float = 30.0, quiet_calls: int = 20,
                 full_after: float = 3600.0, slow: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.active_calls = active_calls
        self.young = young
        self.middle = middle
        self.interval = interval
        self.quiet_calls = quiet_calls
        self.full_after = full_after
        self.slow = slow
        self.clock = clock
        self.last = clock()
        self.collections = 0  # full collections made by this task
        self.max_pause = 0.0  # the longest pause of any collection, seconds
        self.pauses = [0, 0, 0]  # collections seen per generation
        self._began = 0.0
        self._saved: tuple[int, int, int] | None = None

    def due(self, now: float, active: int) -> bool:
        """A full collection now? When quiet (and not again within `interval`), or when
        the last one is `full_after` ago."""
        since = now - self.last
        return (active <= self.quiet_calls and since >= self.interval) or since >= self.full_after

    def start(self) -> None:
        """Young and middle generations automatic, the oldest ours; pauses measured."""
        self._saved = gc.get_threshold()
        gc.set_threshold(self.young, self.middle, NEVER)
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        gc.enable()

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = int(info.get("generation", 2))
        self.pauses[min(generation, 2)] += 1
        if pause > self.max_pause:
            self.max_pause = pause
        if pause > self.slow:
            log.info("gc.pause", generation=generation, pause_ms=round(pause * 1000, 1),
                     objects=info.get("collected", 0))

    def collect(self) -> None:
        """A full collection of what is not frozen (a pause: see `due`)."""
        t0 = time.perf_counter()
        found = gc.collect()
        self.last = self.clock()
        self.collections += 1
        pause = time.perf_counter() - t0
        if found or pause > self.slow:
            log.info("gc.collected", objects=found, pause_ms=round(pause * 1000, 1),
                     active_calls=self.active_calls())

    async def run(self, stop: asyncio.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(self.interval, 5.0))
                if not stop.is_set() and self.due(self.clock(), self.active_calls()):
                    self.collect()
        finally:
            self.stop()
            gc.enable()
