"""The write-behind of the one-node database stores (`sqlite/`, `postgres/`).

Reservations, visitor sessions and returning visitors live in this process's memory
(`MemoryState`: an allocation is atomic on the event loop) and are written to the database
every `flush_interval`, sooner when much is pending, together with the visit counters of
the reports; a failed write is put back and tried again at the next tick. Reads ask memory
first and the database after (what this process does not remember: older sessions,
visitors, callers). Call records are written through: `save_call` queues its rows and
returns once the batch that took them committed; the records of one window share a batch.

A backend's plumbing inherits `WriteBehind` and provides the database's side: `_is_open`,
`_write_behind` (one transaction of `Changes`), `_read_session`, `_read_visits`,
`_read_caller` and `_commit_calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

import structlog

from calltrackd.store.base import Store, StoreError, retention_loop, stop_task
from calltrackd.store.codec import decode_session, storable_session
from calltrackd.store.memory import Changes, InMemoryReservations, MemoryState
from calltrackd.tracking.model import LastVisit, VisitorSession
from calltrackd.tracking.reports import VisitCell, visit_cell

log = structlog.get_logger(__name__)

BACKLOG_KICK = 2000  # changes pending that wake the write-behind before its tick
PRUNE_EVERY = 3600.0  # seconds between deletions of visitors past their returning_window
_VISIT_SEEN_MAX = 200_000  # sessions whose visit cell this node remembers (dynamic later)
_SEEN_CALLERS_MAX = 100_000  # (tracker, caller) pairs remembered as seen (~15 MB)

# one save_call: its call row, delivery rows, (tracker, caller, started) or None for an
# anonymous caller, report fact row, and the future its caller waits on
CdrItem = tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[str, str, float] | None,
                tuple[Any, ...], asyncio.Future[None]]
# visit counters not yet written: (tracker, cell) -> [visitors, given a pool number]
VisitCounts = dict[tuple[str, VisitCell], list[int]]
# a visitor read back: (key, session_id, number, at)
VisitorRow = tuple[str, str, str | None, float]


class WriteBehind(InMemoryReservations):
    """What SQLite and PostgreSQL do alike around their database: the memory state and
    its write-behind, sessions and returning visitors, the caller cache, the CDR batches."""

    _cdr_window = 0.02  # seconds a call record may wait for others to share its write

    def __init__(self, *, flush_interval: float, retention: float | None, name: str) -> None:
        self.node_id = "local"
        self.retention = retention
        self._name = name  # of the background tasks: "sqlite-behind", ...
        self._flush_interval = flush_interval
        self._mem = MemoryState()
        self._seen_callers: set[tuple[str, str]] = set()
        self._cdr_queue: list[CdrItem] = []
        self._cdr_task: asyncio.Task[None] | None = None
        self._last_batch = 0.0  # loop time the last CDR batch was taken
        self._behind_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._visit_keep = 0.0  # the longest returning_window noted
        self._last_prune = 0.0
        self._visits_pending: VisitCounts = {}
        self._visit_seen: OrderedDict[str, tuple[str, VisitCell, bool]] = OrderedDict()

    # --- the database's side (the backend's plumbing and reservations) ----------------

    def _is_open(self) -> bool:
        raise NotImplementedError

    async def _write_behind(self, ch: Changes, visits: VisitCounts, prune: float | None
                            ) -> None:
        """Write the changes and visit counters in one transaction; `prune`: also delete
        the visitors that expired before it."""
        raise NotImplementedError

    async def _read_session(self, session_id: str) -> tuple[str, float, bool] | None:
        """The stored session's (data, last_seen, dynamic)."""
        raise NotImplementedError

    async def _read_visits(self, tracker: str, keys: Sequence[str]) -> Sequence[VisitorRow]:
        raise NotImplementedError

    async def _read_caller(self, tracker: str, caller: str) -> bool:
        """Is the caller in the callers table?"""
        raise NotImplementedError

    async def _commit_calls(self, batch: list[CdrItem]) -> Sequence[BaseException | None]:
        """Write the batch; what each save_call gets (None: committed). Raising fails the
        whole batch."""
        raise NotImplementedError

    # --- lifetime ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._is_open():
            raise StoreError("store is closed")

    def _start_behind(self) -> None:
        """The background write-behind (and retention, when set): at the end of `open`."""
        self._behind_task = asyncio.create_task(self._behind_loop(), name=f"{self._name}-behind")
        if self.retention:
            self._retention_task = asyncio.create_task(
                retention_loop(cast(Store, self), self.retention), name=f"{self._name}-retention")

    async def _stop_behind(self) -> None:
        """Stop the background tasks, let the CDR batch in flight end, and write what is
        pending (when open): the first part of `close`."""
        await stop_task(self._retention_task)
        async with self._flush_lock:  # a write under way ends first (cancelled, SQLite's
            await stop_task(self._behind_task)  # thread would commit what is put back)
        self._retention_task = self._behind_task = None
        if self._cdr_task is not None:
            with contextlib.suppress(Exception):
                await self._cdr_task
        if self._is_open():
            await self._flush_behind()

    # --- write-behind: numbers, pool usage, sessions, visitors, visit counters --------

    def _kick(self) -> None:
        if self._mem.backlog() > BACKLOG_KICK:
            self._wake.set()

    async def _behind_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_behind()
            except Exception as exc:  # put back; retried at the next tick
                log.warning("store.write_behind_failed", error=repr(exc))

    async def _flush_behind(self) -> None:
        async with self._flush_lock:  # one flush at a time: their order is the changes'
            ch = self._mem.take_changes()
            visits, self._visits_pending = self._visits_pending, {}
            if not ch and not visits:
                return
            prune = None
            if ch.visits and self._last_prune + PRUNE_EVERY < (now := time.time()):
                self._last_prune, prune = now, now
            try:
                await self._write_behind(ch, visits, prune)
            except BaseException:
                self._mem.put_back(ch)
                for key, (n, d) in visits.items():
                    counts = self._visits_pending.setdefault(key, [0, 0])
                    counts[0] += n
                    counts[1] += d
                raise

    async def _flush_for_count(self) -> None:
        """Write what is pending before counting sessions; the store's trouble is logged
        (the count is of what is written)."""
        try:
            await self._flush_behind()
        except Exception as exc:
            log.warning("store.write_behind_failed", error=repr(exc))

    # --- sessions and visits -----------------------------------------------------------

    async def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        self._check_open()
        session = storable_session(session)  # the visit's counters too: never refused
        self._mem.create_session(session, dynamic)
        cell = visit_cell(session)
        counts = self._visits_pending.setdefault((session.tracker, cell), [0, 0])
        counts[0] += 1
        counts[1] += dynamic
        self._remember_visit(session.id, (session.tracker, cell, dynamic))
        self._kick()

    async def get_session(self, session_id: str) -> VisitorSession | None:
        session = self._mem.get_session(session_id)
        if session is not None:
            return session
        row = await self._read_session(session_id)
        if row is None:
            return None
        return self._mem.remember(decode_session(row[0]).seen(row[1]))

    async def touch_session(self, session_id: str, now: float, dynamic: bool = False) -> None:
        self._check_open()
        self._mem.touch_session(session_id, now, dynamic)
        if dynamic:
            await self._count_dynamic(session_id)
        self._kick()

    def _remember_visit(self, session_id: str, seen: tuple[str, VisitCell, bool]) -> None:
        self._visit_seen[session_id] = seen
        if len(self._visit_seen) > _VISIT_SEEN_MAX:
            self._visit_seen.popitem(last=False)

    async def _count_dynamic(self, session_id: str) -> None:
        """A session got a pool number: count it once in its visit cell."""
        seen = self._visit_seen.get(session_id)
        if seen is None:  # older than this process remembers: the sessions table knows
            row = await self._read_session(session_id)
            if row is None:
                return
            session = decode_session(row[0])
            seen = (session.tracker, visit_cell(session), bool(row[2]))
            self._remember_visit(session_id, seen)  # its next pings ask no more
        tracker, cell, counted = seen
        if counted:
            return
        self._visit_seen[session_id] = (tracker, cell, True)
        self._visits_pending.setdefault((tracker, cell), [0, 0])[1] += 1

    async def note_visit(self, tracker: str, keys: Sequence[str], visit: LastVisit,
                         keep: float) -> None:
        self._check_open()
        self._visit_keep = max(self._visit_keep, keep)
        self._mem.note_visit(tracker, keys, visit)
        self._kick()

    async def last_visit(self, tracker: str, keys: Sequence[str]) -> LastVisit | None:
        best, unknown = self._mem.last_visit(tracker, keys)
        if unknown:
            for key, session_id, number, at in await self._read_visits(tracker, unknown):
                visit = LastVisit(session_id, number, at)
                self._mem.remember_visit(tracker, key, visit)
                if best is None or visit.at > best.at:
                    best = visit
        return best

    # --- caller history ----------------------------------------------------------------

    async def caller_seen(self, tracker: str, caller: str) -> bool:
        # Once seen, always seen (the database is this node's own): repeat callers are
        # answered from memory without a trip to the database.
        key = (tracker, caller)
        if key in self._seen_callers:
            return True
        seen = await self._read_caller(tracker, caller)
        if seen:
            if len(self._seen_callers) >= _SEEN_CALLERS_MAX:
                self._seen_callers.clear()
            self._seen_callers.add(key)
        return seen

    # --- call records: written through, group-committed --------------------------------

    def _queue_call(self, row: tuple[Any, ...], drows: list[tuple[Any, ...]],
                    caller: tuple[str, str, float] | None, fact: tuple[Any, ...]
                    ) -> asyncio.Future[None]:
        """Queue a save_call's rows; the future is done when their batch committed. No
        shield needed: a cancelled waiter cancels it, which the batch skips, and the rows
        are written all the same."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._cdr_queue.append((row, drows, caller, fact, done))
        if self._cdr_task is None or self._cdr_task.done():
            self._cdr_task = asyncio.create_task(self._drain_calls(), name=f"{self._name}-cdrs")
        return done

    async def _drain_calls(self) -> None:
        loop = asyncio.get_running_loop()
        while self._cdr_queue:
            # at most one batch per window: under load the records of the window share a
            # write (a batch of one costs as much as a batch of sixty: on SQLite 3,000
            # records/s came in ~1,000 batches); a lone record after a quiet spell is
            # written at once
            wait = self._last_batch + self._cdr_window - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_batch = loop.time()
            batch, self._cdr_queue = self._cdr_queue, []
            errors: Sequence[BaseException | None]
            try:
                errors = await self._commit_calls(batch)
            except Exception as exc:  # the database is away: every record fails
                errors = [exc] * len(batch)
            for (*_, done), error in zip(batch, errors, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
