"""Hunt `round_robin`: where a call's hunt starts, from a count the nodes share.

A route that rotates (`routing.rotates`: hunt round_robin, two targets or more) waits in
ROUTING while the store counts one more call of its target list (`Store.rotate` under
`routing.rotation_key`: atomic, and one count for every node on the same store); the
hunt then starts at that call's turn (`routing.rotated`) and fails over in order, as
`sequential` does. So two nodes taking calls in turn still hand them to the targets in
turn.

Tracking never costs a call: the store has `[store] rotation_wait` (0.1 s by default) to
answer. Down, slow or failing, the node counts on by itself from the last count it saw
of that list (so a store that is only slow for a moment keeps the rotation nearly where
it was) and logs `b2bua.rotation_local` at most once a minute, with the number of calls
counted alone since the last such line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from ..aio import bounded
from .guard import LogLimiter
from .routing import Route, rotated, rotates, rotation_key

log = structlog.get_logger("calltrackd.b2bua")

__all__ = ["ROTATION_WAIT", "Rotation"]

ROTATION_WAIT = 0.1  # seconds the store has to count a call (as `[store] rotation_wait`)
_LISTS_MAX = 10_000  # target lists whose last count the node keeps (a reload adds some)


class Rotation:
    """The engine's round_robin counter: `route(loop, route, then)` calls `then` with the
    route rotated to its call's turn, once the store has counted it (or could not)."""

    def __init__(self, rotate: Callable[[str], Awaitable[int]],
                 wait: Callable[[], float] = lambda: ROTATION_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rotate = rotate  # Store.rotate
        self.wait = wait  # the live `[store] rotation_wait`
        self.clock = clock
        self.local = 0  # calls counted by this node alone (the store did not answer)
        self._seen: dict[str, int] = {}  # key → the last count, the store's or our own
        self._alone = 0  # counted alone since the last log line
        self._log = LogLimiter(60.0)
        self._tasks: set[asyncio.Task[None]] = set()  # held until done (weak in the loop)

    @staticmethod
    def wanted(r: Route) -> bool:
        return rotates(r)

    def route(self, loop: asyncio.AbstractEventLoop, r: Route,
              then: Callable[[Route], None]) -> None:
        task = loop.create_task(self._route(loop, r, then))
        if task is not None:  # None in the tests' fake loop, which runs it at once
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _route(self, loop: asyncio.AbstractEventLoop, r: Route,
                     then: Callable[[Route], None]) -> None:
        then(rotated(r, await self.count(loop, rotation_key(r.tracker.id, r.targets))))

    async def count(self, loop: asyncio.AbstractEventLoop, key: str) -> int:
        """The store's count of calls to `key` with this one; else one more than the
        last count this node saw of it. Never raises (but for a cancel)."""
        try:
            n = int(await bounded(loop, self.rotate(key), self.wait()))
        except Exception as exc:  # StoreError, TimeoutError, anything: the call goes on
            n = self._seen.get(key, 0) + 1
            self.local += 1
            self._alone += 1
            left_out = self._log.allow("store", self.clock())
            if left_out is not None:
                log.warning("b2bua.rotation_local", key=key, calls=self._alone,
                            error=type(exc).__name__ if isinstance(exc, TimeoutError)
                            else repr(exc)[:200])
                self._alone = 0
        if key not in self._seen and len(self._seen) >= _LISTS_MAX:
            self._seen.clear()
        self._seen[key] = n
        return n
