"""The SQLite store's reservations, sessions and visits: held in memory (the allocator's
state, `MemoryState`), persisted behind by the plumbing; and the caller history.
"""

from __future__ import annotations

from collections.abc import Sequence

from calltrackd.store.codec import decode_session, storable_session
from calltrackd.store.memory import InMemoryReservations
from calltrackd.tracking.model import (
    LastVisit,
    VisitorSession,
)
from calltrackd.tracking.reports import (
    VisitCell,
    visit_cell,
)

from .plumbing import SqlitePlumbing

_VISIT_SEEN_MAX = 200_000  # sessions whose visit cell this node remembers (dynamic later)
_SEEN_CALLERS_MAX = 100_000  # (tracker, caller) pairs remembered as seen (~15 MB)


class SqliteReservations(SqlitePlumbing, InMemoryReservations):
    """Sessions, visits, reservations and holder history (in memory, written behind).
    The reservation methods answered from `MemoryState` are `InMemoryReservations`', as
    on PostgreSQL; the plumbing provides its `_check_open` and `_kick`."""

    async def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        self._check_open()
        session = storable_session(session)  # the visit's counters too: never refused
        self._mem.create_session(session, dynamic)
        self._count_visit(session, dynamic)
        self._kick()

    async def get_session(self, session_id: str) -> VisitorSession | None:
        session = self._mem.get_session(session_id)
        if session is not None:
            return session
        sql = "SELECT data, last_seen FROM sessions WHERE id = ?"
        row = await self._read(lambda c: c.execute(sql, (session_id,)).fetchone())
        if row is None:
            return None
        return self._mem.remember(decode_session(row[0]).seen(row[1]))

    async def touch_session(self, session_id: str, now: float, dynamic: bool = False) -> None:
        self._check_open()
        self._mem.touch_session(session_id, now, dynamic)
        if dynamic:
            await self._count_dynamic(session_id)
        self._kick()

    # --- visits: custom updates, returning visitors (in memory, written behind) -------

    async def note_visit(self, tracker: str, keys: Sequence[str], visit: LastVisit,
                         keep: float) -> None:
        self._check_open()
        self._visit_keep = max(self._visit_keep, keep)
        self._mem.note_visit(tracker, keys, visit)
        self._kick()

    async def last_visit(self, tracker: str, keys: Sequence[str]) -> LastVisit | None:
        best, unknown = self._mem.last_visit(tracker, keys)
        if unknown:
            marks = ",".join("?" * len(unknown))
            sql = (f"SELECT key, session_id, number, at FROM visitors"
                   f" WHERE tracker = ? AND key IN ({marks})")
            rows = await self._read(lambda c: c.execute(sql, (tracker, *unknown)).fetchall())
            for key, session_id, number, at in rows:
                visit = LastVisit(session_id, number, at)
                self._mem.remember_visit(tracker, key, visit)
                if best is None or visit.at > best.at:
                    best = visit
        return best

    # --- caller history --------------------------------------------------------------

    async def caller_seen(self, tracker: str, caller: str) -> bool:
        # Once seen, always seen (this store is one node's own): repeat callers are
        # answered from memory without a trip to the reader thread.
        key = (tracker, caller)
        if key in self._seen_callers:
            return True
        sql = "SELECT 1 FROM callers WHERE tracker = ? AND caller = ?"
        seen = await self._read(lambda c: c.execute(sql, (tracker, caller)).fetchone() is not None)
        if seen:
            if len(self._seen_callers) >= _SEEN_CALLERS_MAX:
                self._seen_callers.clear()
            self._seen_callers.add(key)
        return seen

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        sql = "INSERT OR IGNORE INTO callers VALUES (?,?,?)"
        await self._write(lambda c: c.execute(sql, (tracker, caller, now)) and None)

    # --- holder history, visits, confidences ------------------------------------------
    # The history is the memory state's (it is rebuilt as numbers are handed out after
    # a restart); visits and confidences are read from the sessions and calls tables.

    def _count_visit(self, session: VisitorSession, dynamic: bool) -> None:
        cell = visit_cell(session)
        counts = self._visits_pending.setdefault((session.tracker, cell), [0, 0])
        counts[0] += 1
        counts[1] += dynamic
        self._remember_visit(session.id, (session.tracker, cell, dynamic))

    def _remember_visit(self, session_id: str, seen: tuple[str, VisitCell, bool]) -> None:
        self._visit_seen[session_id] = seen
        if len(self._visit_seen) > _VISIT_SEEN_MAX:
            self._visit_seen.popitem(last=False)

    async def _count_dynamic(self, session_id: str) -> None:
        """A session got a pool number: count it once in its visit cell."""
        seen = self._visit_seen.get(session_id)
        if seen is None:  # older than this node remembers: the sessions table knows
            sql = "SELECT data, dynamic FROM sessions WHERE id = ?"
            row = await self._read(lambda c: c.execute(sql, (session_id,)).fetchone())
            if row is None:
                return
            session = decode_session(row[0])
            seen = (session.tracker, visit_cell(session), bool(row[1]))
            self._remember_visit(session_id, seen)  # its next pings ask no more
        tracker, cell, counted = seen
        if counted:
            return
        self._visit_seen[session_id] = (tracker, cell, True)
        self._visits_pending.setdefault((tracker, cell), [0, 0])[1] += 1

