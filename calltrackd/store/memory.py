"""What the embedded store keeps in memory: reservations and recent visitor sessions.

The fast path of `SqliteStore`: allocation, renewal and session lookups run on the event
loop without I/O (so an allocation is atomic within the one asyncio process). Changes
are collected here as a `Changes` batch that the backend persists behind, and put back
if that write fails.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from calltrackd.store.allocation import Allocator
from calltrackd.store.base import HISTORY_KEEP, HISTORY_MAX, PoolStats
from calltrackd.tracking.model import (
    Hold,
    LastVisit,
    NumberState,
    Tracker,
    UsageBucket,
    VisitorSession,
)

_SESSION_CACHE = 50_000


@dataclass(slots=True)
class Changes:
    """What changed since the last write-behind."""

    numbers: list[NumberState] = field(default_factory=list)
    gone_numbers: set[str] = field(default_factory=set)
    usage: list[UsageBucket] = field(default_factory=list)
    sessions: dict[str, tuple[VisitorSession, bool]] = field(default_factory=dict)  # new
    touches: dict[str, tuple[float, bool]] = field(default_factory=dict)  # last_seen, dynamic
    updates: dict[str, VisitorSession] = field(default_factory=dict)  # data replaced
    visits: dict[tuple[str, str], LastVisit] = field(default_factory=dict)  # (tracker, key)

    def __bool__(self) -> bool:
        return bool(self.numbers or self.gone_numbers or self.usage or self.sessions
                    or self.touches or self.updates or self.visits)


class MemoryState:
    def __init__(self, session_cache: int = _SESSION_CACHE) -> None:
        self.alloc = Allocator()
        self._cache: OrderedDict[str, VisitorSession] = OrderedDict()
        self._cache_size = session_cache
        self._visits: OrderedDict[tuple[str, str], LastVisit] = OrderedDict()
        self._saved: list[NumberState] | None = None  # applied at the first sync
        self._saved_usage: list[UsageBucket] = []
        self._pending = Changes()
        self.history = HoldHistory()

    def load(self, states: Iterable[NumberState], usage: Iterable[UsageBucket]) -> None:
        """Persisted state, restored into the pools at the first `sync_pools`."""
        self._saved, self._saved_usage = list(states), list(usage)

    def backlog(self) -> int:
        p = self._pending
        return (len(self.alloc.dirty) + len(p.sessions) + len(p.touches) + len(p.updates)
                + len(p.visits))

    # --- write-behind ----------------------------------------------------------------

    def take_changes(self) -> Changes:
        alloc, out = self.alloc, self._pending
        out.numbers = [s for n in alloc.dirty if (s := alloc.state(n)) is not None]
        out.usage = [b for k, h in alloc.dirty_usage if (b := alloc.usage(k, h)) is not None]
        alloc.dirty, alloc.dirty_usage = set(), set()
        self._pending = Changes()
        return out

    def put_back(self, failed: Changes) -> None:
        """A write-behind failed: its changes are due again (newer ones win)."""
        self.alloc.dirty.update(s.number for s in failed.numbers)
        self.alloc.dirty_usage.update(((b.tracker, b.pool), b.hour) for b in failed.usage)
        p = self._pending
        p.gone_numbers |= failed.gone_numbers
        for sid, entry in failed.sessions.items():
            p.sessions.setdefault(sid, entry)
        for sid, (seen, d) in failed.touches.items():
            prev = p.touches.get(sid, (seen, d))
            p.touches[sid] = (max(seen, prev[0]), d or prev[1])
        for sid, session in failed.updates.items():
            p.updates.setdefault(sid, session)
        for vkey, visit in failed.visits.items():
            newer = p.visits.get(vkey)
            if newer is None or newer.at < visit.at:
                p.visits[vkey] = visit

    # --- sessions --------------------------------------------------------------------

    def remember(self, session: VisitorSession) -> VisitorSession:
        """Cache a session read from the backend (a newer unsaved touch wins)."""
        touched = self._pending.touches.get(session.id)
        if touched is not None and touched[0] > session.last_seen:
            session = session.seen(touched[0])
        self._put(session)
        return session

    def _put(self, session: VisitorSession) -> None:
        self._cache[session.id] = session
        self._cache.move_to_end(session.id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        self._put(session)
        self._pending.sessions[session.id] = (session, dynamic)

    def get_session(self, session_id: str) -> VisitorSession | None:
        """The session if in memory; None means: ask the backend."""
        new = self._pending.sessions.get(session_id)
        if new is not None:
            return new[0]
        return self._cache.get(session_id) or self._pending.updates.get(session_id)

    def touch_session(self, session_id: str, now: float, dynamic: bool) -> None:
        cached = self._cache.get(session_id)
        if cached is not None and now > cached.last_seen:
            self._cache[session_id] = cached.seen(now)
        p = self._pending
        new = p.sessions.get(session_id)
        if new is not None:
            s, d = new
            p.sessions[session_id] = (s.seen(max(now, s.last_seen)), d or dynamic)
        else:
            seen, d = p.touches.get(session_id, (now, dynamic))
            p.touches[session_id] = (max(seen, now), d or dynamic)

    # --- visits: custom updates, returning visitors ----------------------------------

    def update_session(self, session: VisitorSession) -> None:
        p = self._pending
        new = p.sessions.get(session.id)
        cached = self._cache.get(session.id)
        if cached is not None and cached.last_seen > session.last_seen:
            session = session.seen(cached.last_seen)
        self._put(session)
        if new is not None:
            p.sessions[session.id] = (session, new[1])
        else:
            p.updates[session.id] = session

    def note_visit(self, tracker: str, keys: Sequence[str], visit: LastVisit) -> None:
        for key in keys:
            self._visits[(tracker, key)] = visit
            self._visits.move_to_end((tracker, key))
            self._pending.visits[(tracker, key)] = visit
        while len(self._visits) > self._cache_size:
            self._visits.popitem(last=False)

    def last_visit(self, tracker: str, keys: Sequence[str]
                   ) -> tuple[LastVisit | None, list[str]]:
        """(the latest visit in memory, the keys memory does not know: ask the backend)."""
        best, unknown = None, []
        for key in keys:
            visit = self._visits.get((tracker, key))
            if visit is None:
                unknown.append(key)
            elif best is None or visit.at > best.at:
                best = visit
        return best, unknown

    def remember_visit(self, tracker: str, key: str, visit: LastVisit) -> None:
        """Cache a visit read from the backend (a newer one noted meanwhile wins)."""
        mine = self._visits.get((tracker, key))
        if mine is None or mine.at < visit.at:
            self._visits[(tracker, key)] = visit

    def reserve_number(self, tracker: str, pool: str, number: str, session_id: str,
                       now: float, ttl: float, previous: str | None) -> Hold | None:
        return self.alloc.take((tracker, pool), number, session_id, now, ttl, previous)

    # --- end of visits ---------------------------------------------------------------

    # --- reservations ----------------------------------------------------------------

    def sync_pools(self, trackers: Sequence[Tracker]) -> None:
        configured = {n for t in trackers for p in t.pools for n in p.numbers}
        gone = self._pending.gone_numbers
        keys = []
        for t in trackers:
            for pool in t.pools:
                keys.append((t.id, pool.name))
                gone.update(self.alloc.set_pool(keys[-1], pool.numbers, t.cooldown))
        gone.update(self.alloc.remove_pools_except(keys))
        if self._saved is not None:
            for state in self.alloc.restore(self._saved):
                if state.number in configured:  # now another tracker's: rewrite its row
                    self.alloc.dirty.add(state.number)
                else:
                    gone.add(state.number)
            for bucket in self._saved_usage:
                self.alloc.restore_usage(bucket)
            self._saved, self._saved_usage = None, []
        gone -= configured

    def reserve(
        self, tracker: str, pool: str, session_id: str, now: float, ttl: float
    ) -> Hold | None:
        return self.history.note(self.alloc.allocate((tracker, pool), session_id, now, ttl))

    def renew(self, session_id: str, now: float, ttl: float) -> Hold | None:
        return self.history.note(self.alloc.renew(session_id, now, ttl))

    def release(self, session_id: str, now: float) -> bool:
        held = self.alloc.holding(session_id, now)
        released = self.alloc.release(session_id, now)
        if released and held is not None:
            self.history.note(Hold(held.number, held.session_id, held.tracker, held.pool,
                                   held.started_at, now))
        return released

    def holders(self, number: str, now: float) -> tuple[Hold | None, Hold | None]:
        return self.alloc.holders(number, now)

    def pool_stats(self, now: float, since: float | None) -> list[PoolStats]:
        out = []
        alloc = self.alloc
        for key in alloc.pools():
            c = alloc.counts(key, now)
            out.append(PoolStats(
                tracker=key[0], pool=key[1], size=c.size, free=c.free, reserved=c.reserved,
                cooling=c.cooling, peak=alloc.peak(key, now, since),
                peak_all_time=alloc.peak(key, now), shortfall=alloc.shortfall(key, since),
            ))
        return out

    def pool_usage(self, tracker: str, pool: str, first_hour: int,
                   end_hour: int) -> list[UsageBucket]:
        key = (tracker, pool)
        return [b for h in range(first_hour, end_hour)
                if (b := self.alloc.usage(key, h)) is not None]


# --- holder history --------------------------------------------------------------------


class HoldHistory:
    """Each pool number's recent holds, newest last: (session, started_at, until).

    A renewal moves the `until` of its hold; a hold taken up again after it lapsed is a
    new one. Ended holds older than `HISTORY_KEEP`, and all but the newest `HISTORY_MAX`
    of a number, are dropped as the number is used.
    """

    def __init__(self) -> None:
        self._by_number: dict[str, list[Hold]] = {}

    def note(self, hold: Hold | None) -> Hold | None:
        if hold is None:
            return None
        holds = self._by_number.setdefault(hold.number, [])
        if holds and holds[-1].session_id == hold.session_id and (
                holds[-1].started_at == hold.started_at):
            holds[-1] = hold
            return hold
        holds.append(hold)
        cutoff = hold.started_at - HISTORY_KEEP
        drop = 0
        while drop < len(holds) - 1 and (holds[drop].until < cutoff
                                         or len(holds) - drop > HISTORY_MAX):
            drop += 1
        if drop:
            del holds[:drop]
        return hold

    def of(self, number: str, now: float) -> list[Hold]:
        cutoff = now - HISTORY_KEEP
        return [h for h in reversed(self._by_number.get(number, ())) if h.until >= cutoff]

    def forget(self, numbers: Iterable[str]) -> None:
        for n in numbers:
            self._by_number.pop(n, None)


# --- end of holder history -------------------------------------------------------------


class InMemoryReservations:
    """The `Store` methods a backend answers from its `MemoryState` (reservations, the
    holder history, returning visitors and custom updates; written behind by the
    backend, which provides `_check_open` and `_kick`). PostgreSQL and SQLite use it."""

    _mem: MemoryState

    def _check_open(self) -> None:
        raise NotImplementedError

    def _kick(self) -> None:
        """Wake the write-behind when much is pending."""

    async def sync_pools(self, trackers: Sequence[Tracker]) -> None:
        self._check_open()
        self._mem.sync_pools(trackers)

    async def reserve(
        self, tracker: str, pool: str, session_id: str, now: float, ttl: float
    ) -> Hold | None:
        self._check_open()
        hold = self._mem.reserve(tracker, pool, session_id, now, ttl)
        self._kick()
        return hold

    async def reserve_number(
        self, tracker: str, pool: str, number: str, session_id: str, now: float, ttl: float,
        previous: str | None = None,
    ) -> Hold | None:
        self._check_open()
        hold = self._mem.reserve_number(tracker, pool, number, session_id, now, ttl, previous)
        self._kick()
        return hold

    async def renew(self, session_id: str, now: float, ttl: float) -> Hold | None:
        self._check_open()
        return self._mem.renew(session_id, now, ttl)

    async def release(self, session_id: str, now: float) -> bool:
        self._check_open()
        return self._mem.release(session_id, now)

    async def holders(self, number: str, now: float) -> tuple[Hold | None, Hold | None]:
        self._check_open()
        return self._mem.holders(number, now)

    async def pool_stats(self, now: float, since: float | None = None) -> list[PoolStats]:
        self._check_open()
        return self._mem.pool_stats(now, since)

    async def pool_usage(self, tracker: str, pool: str, first_hour: int,
                         end_hour: int) -> list[UsageBucket]:
        self._check_open()
        return self._mem.pool_usage(tracker, pool, first_hour, end_hour)

    async def hold_history(self, number: str, now: float) -> list[Hold]:
        self._check_open()
        return self._mem.history.of(number, now)

    async def update_session(self, session: VisitorSession) -> None:
        self._check_open()
        self._mem.update_session(session)
        self._kick()
