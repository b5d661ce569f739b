"""The reservation engine of the one-node stores (pure: no I/O, `now` passed in): which
number of a pool a visitor gets, held in memory by `MemoryState` (store/memory.py) and
persisted behind by the SQLite store. The Redis store runs the same rules as Lua scripts
(store/redis_lua.py). Which *pool* a visitor gets is tracking/allocator.py's `match_pool`.

Theory of operation: reservations as ordered sets. Every pool number is in
exactly one of two heaps of its pool:

- `idle`: numbers nobody holds, keyed by when they become available again
  (`released_at + cooldown`; 0 for a number never handed out). Allocation pops the lowest
  key not after `now`: the number idle longest, which keeps calls from people who wrote
  down an old number with the visitor who had it.
- `held`: live reservations keyed by `expires_at`. Before every operation on a pool, the
  reservations whose time has passed are released lazily, at their `expires_at`, into
  `idle` with key `expires_at + cooldown`.

Renewal pushes a fresh `held` entry; the superseded one is skipped when it surfaces
(lazy deletion: each entry carries the number's version at push time). Allocation and
renewal are O(log n) amortised; lookups by number and by session are dict lookups.

For attribution each number keeps its current holder (session, since, expires_at) and
its last holder (session, since, released_at). A session whose reservation lapsed gets
its own number back if nobody took it since, even within the cool-down.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from calltrackd.tracking.model import Hold, NumberState, UsageBucket

__all__ = ["Allocator", "PoolCounts", "PoolKey"]

PoolKey = tuple[str, str]  # (tracker id, pool name)

_HOUR = 3600
_KEEP_HOURS = 24 * 31  # usage buckets kept in memory


@dataclass(frozen=True, slots=True)
class PoolCounts:
    size: int
    free: int
    reserved: int
    cooling: int


@dataclass(slots=True)
class _Number:
    number: str
    key: PoolKey
    order: int  # position in config: never-used numbers go out in config order
    holder: str | None = None
    held_since: float = 0.0
    expires_at: float = 0.0
    last_holder: str | None = None
    last_held_since: float = 0.0
    released_at: float = 0.0
    version: int = 0

    def snapshot(self) -> NumberState:
        return NumberState(
            self.number, self.key[0], self.key[1], self.holder, self.held_since,
            self.expires_at, self.last_holder, self.last_held_since, self.released_at,
        )


@dataclass(slots=True)
class _Pool:
    key: PoolKey
    cooldown: float
    numbers: dict[str, _Number] = field(default_factory=dict)
    idle: list[tuple[float, int, int, str]] = field(default_factory=list)  # key, order, ver
    held: list[tuple[float, int, str]] = field(default_factory=list)  # expires_at, ver
    active: int = 0
    peak_ever: int = 0
    shortfall_total: int = 0
    hours: dict[int, list[int]] = field(default_factory=dict)  # hour → [peak, shortfall]


class Allocator:
    """Every pool's reservations, in memory. Not thread-safe; one asyncio loop owns it."""

    def __init__(self) -> None:
        self._pools: dict[PoolKey, _Pool] = {}
        self._numbers: dict[str, _Number] = {}
        self._by_session: dict[str, _Number] = {}  # holder or last holder → its number
        self.dirty: set[str] = set()  # numbers changed since the store last persisted
        self.dirty_usage: set[tuple[PoolKey, int]] = set()

    # --- configuration ---------------------------------------------------------------

    def set_pool(self, key: PoolKey, numbers: Sequence[str], cooldown: float) -> list[str]:
        """Create or update a pool; returns the numbers it no longer has (state dropped)."""
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key, cooldown)
        wanted = {n: i for i, n in enumerate(numbers)}
        removed = [n for n in pool.numbers if n not in wanted]
        for n in removed:
            self._forget(pool.numbers.pop(n))
        for n, order in wanted.items():
            num = pool.numbers.get(n)
            if num is None:
                other = self._numbers.get(n)
                if other is not None:  # moved here from another pool
                    self._forget(self._pools[other.key].numbers.pop(n))
                    self._rebuild(self._pools[other.key])
                num = pool.numbers[n] = self._numbers[n] = _Number(n, key, order)
            num.order = order
        pool.cooldown = cooldown
        self._rebuild(pool)
        return removed

    def remove_pools_except(self, keep: Iterable[PoolKey]) -> list[str]:
        """Drop pools no longer configured; returns their numbers."""
        keep = set(keep)
        removed: list[str] = []
        for key in [k for k in self._pools if k not in keep]:
            pool = self._pools.pop(key)
            for num in pool.numbers.values():
                self._forget(num)
                removed.append(num.number)
        return removed

    def restore(self, states: Iterable[NumberState]) -> list[NumberState]:
        """Load persisted states of configured numbers of the same tracker; returns the
        states that fit no configured number (now unknown, or another tracker's)."""
        refused: list[NumberState] = []
        touched: set[PoolKey] = set()
        for state in states:
            num = self._numbers.get(state.number)
            if num is None or num.key[0] != state.tracker:
                refused.append(state)
                continue
            num.holder, num.held_since, num.expires_at = (
                state.holder, state.held_since, state.expires_at
            )
            num.last_holder, num.last_held_since, num.released_at = (
                state.last_holder, state.last_held_since, state.released_at
            )
            for session in (state.last_holder, state.holder):
                if session is not None:
                    self._by_session[session] = num
            touched.add(num.key)
        for key in touched:
            self._rebuild(self._pools[key])
        return refused

    def restore_usage(self, bucket: UsageBucket) -> None:
        """Load a persisted hour of use (old hours are pruned at the next new hour)."""
        pool = self._pools.get((bucket.tracker, bucket.pool))
        if pool is None:
            return
        pool.peak_ever = max(pool.peak_ever, bucket.peak)
        pool.shortfall_total += bucket.shortfall
        pool.hours[bucket.hour] = [bucket.peak, bucket.shortfall]

    # --- reservations ----------------------------------------------------------------

    def allocate(self, key: PoolKey, session_id: str, now: float, ttl: float) -> Hold | None:
        """Reserve a number of the pool for the session, or renew the one it holds.

        None when the pool has no free number (counted as the pool's shortfall) or is
        not configured.
        """
        mine = self.renew(session_id, now, ttl)
        if mine is not None:
            return mine
        pool = self._pools.get(key)
        if pool is None:
            return None
        self._expire(pool, now)
        idle = pool.idle
        while idle:
            available_at, _, version, n = idle[0]
            num = pool.numbers.get(n)
            if num is None or num.version != version:
                heapq.heappop(idle)  # superseded entry
                continue
            if available_at > now:
                break
            heapq.heappop(idle)
            return self._take(pool, num, session_id, now, ttl)
        pool.shortfall_total += 1
        self._bucket(pool, now)[1] += 1
        return None

    def take(self, key: PoolKey, number: str, session_id: str, now: float, ttl: float,
             previous: str | None = None) -> Hold | None:
        """Reserve this number of the pool for the session when it is free (nobody holds
        it and its cool-down passed), or when `previous` holds it or held it last (the
        same visitor's earlier session: its hold ends now). None otherwise."""
        pool = self._pools.get(key)
        num = pool.numbers.get(number) if pool is not None else None
        if pool is None or num is None:
            return None
        self._expire(pool, now)
        if num.holder == session_id:
            return self.renew(session_id, now, ttl)
        if num.holder is not None:
            if previous is None or num.holder != previous:
                return None
            self._free(pool, num, now)  # handed over to the visitor's new session
        elif previous is None or num.last_holder != previous:
            if num.last_holder is not None and num.released_at + pool.cooldown > now:
                return None  # still cooling for someone else
        num.version += 1  # its idle entry is superseded
        self._compact(pool)
        return self._take(pool, num, session_id, now, ttl)

    def renew(self, session_id: str, now: float, ttl: float) -> Hold | None:
        """Extend the session's reservation to `now + ttl`, keeping its number.

        A lapsed reservation is taken up again when nobody held the number since.
        """
        num = self._by_session.get(session_id)
        if num is None:
            return None
        pool = self._pools[num.key]
        self._expire(pool, now)
        if num.holder == session_id:
            num.expires_at = now + ttl
            num.version += 1
            heapq.heappush(pool.held, (num.expires_at, num.version, num.number))
            self._compact(pool)
            self.dirty.add(num.number)
            return self._current(num)
        if num.holder is None and num.last_holder == session_id:
            num.version += 1  # its idle entry is superseded
            self._compact(pool)
            return self._take(pool, num, session_id, now, ttl)
        del self._by_session[session_id]
        return None

    def release(self, session_id: str, now: float) -> bool:
        """End the session's reservation now (the cool-down starts now)."""
        num = self._by_session.get(session_id)
        if num is None:
            return False
        pool = self._pools[num.key]
        self._expire(pool, now)
        if num.holder != session_id:
            return False
        self._free(pool, num, now)
        return True

    def holding(self, session_id: str, now: float) -> Hold | None:
        """The session's live reservation."""
        num = self._by_session.get(session_id)
        if num is None:
            return None
        self._expire(self._pools[num.key], now)
        return self._current(num) if num.holder == session_id else None

    def holders(self, number: str, now: float) -> tuple[Hold | None, Hold | None]:
        """(current holder, last holder) of a pool number; (None, None) if not a pool's."""
        num = self._numbers.get(number)
        if num is None:
            return None, None
        self._expire(self._pools[num.key], now)
        last = None
        if num.last_holder is not None:
            last = Hold(
                num.number, num.last_holder, num.key[0], num.key[1],
                num.last_held_since, num.released_at,
            )
        return self._current(num), last

    # --- figures ---------------------------------------------------------------------

    def pools(self) -> list[PoolKey]:
        return list(self._pools)

    def counts(self, key: PoolKey, now: float) -> PoolCounts:
        pool = self._pools[key]
        self._expire(pool, now)
        cd = pool.cooldown  # same comparison as the idle heap's, to count exactly
        cooling = sum(
            1
            for n in pool.numbers.values()
            if n.holder is None and n.last_holder is not None and n.released_at + cd > now
        )
        free = len(pool.numbers) - pool.active - cooling
        return PoolCounts(len(pool.numbers), free, pool.active, cooling)

    def peak(self, key: PoolKey, now: float, since: float | None = None) -> int:
        """Peak concurrent reservations, all time or since `since` (hour granularity)."""
        pool = self._pools[key]
        self._expire(pool, now)
        if since is None:
            return max(pool.peak_ever, pool.active)
        first = int(since // _HOUR)
        return max([pool.active, *(b[0] for h, b in pool.hours.items() if h >= first)])

    def shortfall(self, key: PoolKey, since: float | None = None) -> int:
        """Requests that found the pool empty, all time or since `since` (hour granularity)."""
        pool = self._pools[key]
        if since is None:
            return pool.shortfall_total
        first = int(since // _HOUR)
        return sum(b[1] for h, b in pool.hours.items() if h >= first)

    def usage(self, key: PoolKey, hour: int) -> UsageBucket | None:
        pool = self._pools.get(key)
        bucket = pool.hours.get(hour) if pool else None
        return UsageBucket(key[0], key[1], hour, *bucket) if bucket else None

    def state(self, number: str) -> NumberState | None:
        num = self._numbers.get(number)
        return num.snapshot() if num else None

    # --- internals -------------------------------------------------------------------

    def _take(self, pool: _Pool, num: _Number, session_id: str, now: float, ttl: float) -> Hold:
        for previous in (num.last_holder, num.holder):
            if previous is not None and previous != session_id:
                if self._by_session.get(previous) is num:
                    del self._by_session[previous]  # its claim on this number ends
        old = self._by_session.get(session_id)
        if old is not None and old is not num and old.holder == session_id:
            self._free(self._pools[old.key], old, now)  # one number per session
        num.holder, num.held_since, num.expires_at = session_id, now, now + ttl
        num.version += 1
        heapq.heappush(pool.held, (num.expires_at, num.version, num.number))
        self._by_session[session_id] = num
        pool.active += 1
        pool.peak_ever = max(pool.peak_ever, pool.active)
        bucket = self._bucket(pool, now)
        bucket[0] = max(bucket[0], pool.active)
        self.dirty.add(num.number)
        return Hold(num.number, session_id, pool.key[0], pool.key[1], now, num.expires_at)

    def _free(self, pool: _Pool, num: _Number, at: float) -> None:
        num.last_holder, num.last_held_since, num.released_at = num.holder, num.held_since, at
        num.holder = None
        num.version += 1
        heapq.heappush(pool.idle, (at + pool.cooldown, num.order, num.version, num.number))
        pool.active -= 1
        self.dirty.add(num.number)

    def _expire(self, pool: _Pool, now: float) -> None:
        held = pool.held
        while held and held[0][0] <= now:
            expires_at, version, n = heapq.heappop(held)
            num = pool.numbers.get(n)
            if num is not None and num.version == version and num.holder is not None:
                self._free(pool, num, expires_at)

    def _current(self, num: _Number) -> Hold | None:
        if num.holder is None:
            return None
        return Hold(
            num.number, num.holder, num.key[0], num.key[1], num.held_since, num.expires_at
        )

    def _bucket(self, pool: _Pool, now: float) -> list[int]:
        hour = int(now // _HOUR)
        bucket = pool.hours.get(hour)
        if bucket is None:
            bucket = pool.hours[hour] = [pool.active, 0]
            for old in [h for h in pool.hours if h < hour - _KEEP_HOURS]:
                del pool.hours[old]
        self.dirty_usage.add((pool.key, hour))
        return bucket

    def _rebuild(self, pool: _Pool) -> None:
        """Recreate both heaps from the numbers' state (config change, restore)."""
        pool.idle, pool.held, pool.active = [], [], 0
        for num in pool.numbers.values():
            num.version += 1
            if num.holder is not None:
                pool.held.append((num.expires_at, num.version, num.number))
                pool.active += 1
            else:
                key = num.released_at + pool.cooldown if num.last_holder is not None else 0.0
                pool.idle.append((key, num.order, num.version, num.number))
        heapq.heapify(pool.idle)
        heapq.heapify(pool.held)

    def _compact(self, pool: _Pool) -> None:
        # Renewals (and reclaims) leave superseded entries behind; they drain as time
        # passes, but a burst of pings must not grow the heaps without bound.
        if len(pool.held) + len(pool.idle) > 4 * len(pool.numbers) + 64:
            self._rebuild(pool)

    def _forget(self, num: _Number) -> None:
        self._numbers.pop(num.number, None)
        for session in (num.holder, num.last_holder):
            if session is not None and self._by_session.get(session) is num:
                del self._by_session[session]
        self.dirty.discard(num.number)
