"""The Redis store's sessions, visits, reservations (the Lua scripts of redis_lua.py:
atomic across nodes), caller and holder history, and the hunt round_robin's rotation
counters (INCR: atomic across nodes).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

from calltrackd.store.base import HISTORY_KEEP, PoolStats
from calltrackd.store.codec import (
    decode_session,
    encode_session,
    storable_session,
)
from calltrackd.tracking.model import (
    Hold,
    LastVisit,
    Tracker,
    UsageBucket,
    VisitorSession,
)

from .plumbing import (
    _NOTES_MAX,
    _SEP,
    SESSION_TTL,
    RedisPlumbing,
    _count_visit,
    _hour,
    _s,
    _stats_field,
)


class RedisReservations(RedisPlumbing):
    """Sessions, visits, reservations, callers and holder history."""

    # --- visitor sessions --------------------------------------------------------------

    async def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        session = storable_session(session)  # without a field Redis cannot take
        key = f"ctd:s:{session.id}"
        vis = f"ctd:vis:{session.tracker}:{_hour(session.first_seen)}"
        field = _stats_field(session)

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={"data": encode_session(session), "dyn": int(dynamic)})
                p.expire(key, SESSION_TTL)
                p.hincrby(vis, field + f"{_SEP}all", 1)
                if dynamic:
                    p.hincrby(vis, field + f"{_SEP}dyn", 1)
                p.expire(vis, 40 * 86400)
                p.sadd("ctd:vtrackers", session.tracker)
                self._index_visit(p, session)
                _count_visit(p, session, visitors=1, dynamic=int(dynamic))
                await p.execute()

        await self._do(run())

    async def get_session(self, session_id: str) -> VisitorSession | None:
        data = await self._do(self.r.hget(f"ctd:s:{session_id}", "data"))
        return decode_session(_s(data) or "") if data else None

    async def touch_session(self, session_id: str, now: float, dynamic: bool = False) -> None:
        key = f"ctd:s:{session_id}"
        raw = await self._do(self.r.hmget(key, ["data", "dyn"]))
        if not raw[0]:
            return
        session = decode_session(_s(raw[0]) or "")

        updated = session.seen(max(session.last_seen, now))

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, "data", encode_session(updated))
                p.expire(key, SESSION_TTL)
                if dynamic and _s(raw[1]) != "1":
                    p.hset(key, "dyn", 1)
                    field = _stats_field(session)
                    p.hincrby(f"ctd:vis:{session.tracker}:{_hour(session.first_seen)}",
                              field + f"{_SEP}dyn", 1)
                    _count_visit(p, session, visitors=0, dynamic=1)
                await p.execute()

        await self._do(run())

    # --- visits: custom updates, returning visitors -------------------------------------
    # ctd:visitor:{tracker}:{key} STRING "session|number|at", expiring after `keep`

    async def update_session(self, session: VisitorSession) -> None:
        key = f"ctd:s:{session.id}"
        raw = await self._do(self.r.hget(key, "data"))
        if not raw:
            return
        stored = decode_session(_s(raw) or "")
        updated = session.seen(max(stored.last_seen, session.last_seen))
        await self._do(self.r.hset(key, "data", encode_session(updated)))

    async def note_visit(self, tracker: str, keys: Sequence[str], visit: LastVisit,
                         keep: float) -> None:
        # written behind, batched: under a burst of new visitors a round trip each would
        # hold a pool connection per request (a returning visitor's note is a nicety; a
        # node killed within the batch window loses at most those notes)
        value = f"{visit.session_id}|{visit.number or ''}|{visit.at!r}"
        seconds = max(1, math.ceil(keep))
        for k in keys:
            self._notes[f"ctd:visitor:{tracker}:{k}"] = (value, seconds)
        while len(self._notes) > _NOTES_MAX:
            del self._notes[next(iter(self._notes))]
        if self._notes_task is None or self._notes_task.done():
            self._notes_task = asyncio.create_task(self._notes_loop(), name="redis-notes")

    async def last_visit(self, tracker: str, keys: Sequence[str]) -> LastVisit | None:
        if not keys:
            return None
        names = [f"ctd:visitor:{tracker}:{k}" for k in keys]
        pending = [self._notes[n][0] for n in names if n in self._notes]
        stored = [] if len(pending) == len(names) else await self._do(self.r.mget(names))
        best = None
        for raw in [*pending, *stored]:
            if raw is None:
                continue
            session_id, number, at = (_s(raw) or "").split("|")
            visit = LastVisit(session_id, number or None, float(at))
            if best is None or visit.at > best.at:
                best = visit
        return best

    async def reserve_number(
        self, tracker: str, pool: str, number: str, session_id: str, now: float, ttl: float,
        previous: str | None = None,
    ) -> Hold | None:
        raw = await self._script("RESERVE_NUMBER", f"{tracker}:{pool}", number, session_id,
                                 now, ttl, _hour(now), previous or "")
        return self._hold(raw, tracker, pool) if raw else None

    # --- end of visits -------------------------------------------------------------------

    # --- reservations ------------------------------------------------------------------

    async def sync_pools(self, trackers: Sequence[Tracker]) -> None:
        keep = set()
        for t in trackers:
            for pool in t.pools:
                key = f"{t.id}:{pool.name}"
                keep.add(key)
                await self._script("SYNC_POOL", key, t.id, pool.name, t.cooldown,
                                   *pool.numbers)
                await self._do(self.r.hset(
                    "ctd:poolnames", key, json.dumps([t.id, pool.name])))
        for raw in await self._do(self.r.smembers("ctd:pools")):
            key = _s(raw) or ""
            if key not in keep:
                await self._script("DROP_POOL", key)
                await self._do(self.r.hdel("ctd:poolnames", key))

    @staticmethod
    def _hold(raw: Any, tracker: str, pool: str) -> Hold | None:
        if not raw:
            return None
        n, session, start, until = raw
        return Hold(_s(n) or "", _s(session) or "", tracker, pool, float(start), float(until))

    async def reserve(
        self, tracker: str, pool: str, session_id: str, now: float, ttl: float
    ) -> Hold | None:
        raw = await self._script("RESERVE", f"{tracker}:{pool}", session_id, now, ttl,
                                 _hour(now))
        if not raw:
            return None
        return await self._note_hold(await self._hold_of(raw), now + ttl)

    async def _hold_of(self, raw: Any) -> Hold | None:
        number = _s(raw[0]) or ""
        meta = await self._do(self.r.hmget(f"ctd:num:{number}", ["tracker", "pool"]))
        return self._hold(raw, _s(meta[0]) or "", _s(meta[1]) or "")

    async def renew(self, session_id: str, now: float, ttl: float) -> Hold | None:
        raw = await self._script("RENEW", session_id, now, ttl, _hour(now))
        return await self._note_hold(await self._hold_of(raw), now + ttl) if raw else None

    async def release(self, session_id: str, now: float) -> bool:
        held = await self._do(self.r.get(f"ctd:hold:{session_id}"))
        released = bool(await self._script("RELEASE", session_id, now))
        if released and held:
            await self._note_release(_s(held) or "", session_id, now)
        return released

    async def holders(self, number: str, now: float) -> tuple[Hold | None, Hold | None]:
        h = await self._do(self.r.hgetall(f"ctd:num:{number}"))
        if not h:
            return None, None
        f = {_s(k): _s(v) for k, v in h.items()}
        tracker, pool = f.get("tracker") or "", f.get("pool") or ""

        def hold(prefix: str) -> Hold | None:
            session = f.get(prefix)
            if not session:
                return None
            return Hold(number, session, tracker, pool, float(f[f"{prefix}_start"] or 0),
                        float(f[f"{prefix}_until"] or 0))

        current, last = hold("cur"), hold("last")
        if current is not None and current.until <= now:
            return None, current  # lapsed: not yet moved by a script, but over
        return current, last

    async def pool_usage(self, tracker: str, pool: str, first_hour: int,
                         end_hour: int) -> list[UsageBucket]:
        key = f"{tracker}:{pool}"
        hours = [str(h) for h in range(first_hour, end_hour)]
        if not hours:
            return []
        peaks = await self._do(self.r.hmget(f"ctd:peak:{key}", hours))
        shorts = await self._do(self.r.hmget(f"ctd:short:{key}", hours))
        return [UsageBucket(tracker, pool, int(h), int(p or 0), int(s or 0))
                for h, p, s in zip(hours, peaks, shorts, strict=True)
                if p is not None or s is not None]

    async def pool_stats(self, now: float, since: float | None = None) -> list[PoolStats]:
        names = await self._do(self.r.hgetall("ctd:poolnames"))
        out = []
        since_hour = int(since // 3600) if since is not None else None
        for key_b, val in sorted(names.items()):
            key = _s(key_b) or ""
            tracker, pool = json.loads(_s(val) or "[]")
            size, free, reserved, cooling = await self._script("COUNTS", key, now)
            peaks = await self._do(self.r.hgetall(f"ctd:peak:{key}"))
            shorts = await self._do(self.r.hgetall(f"ctd:short:{key}"))
            p = {_s(k): int(v) for k, v in peaks.items()}
            s = {_s(k): int(v) for k, v in shorts.items()}

            def in_window(hour: str | None) -> bool:
                return (hour is not None and hour != "all"
                        and (since_hour is None or int(hour) >= since_hour))

            out.append(PoolStats(
                tracker=tracker, pool=pool, size=int(size), free=int(free),
                reserved=int(reserved), cooling=int(cooling),
                peak=max([v for h, v in p.items() if in_window(h)], default=0),
                peak_all_time=p.get("all", 0),
                shortfall=sum(v for h, v in s.items() if in_window(h)),
            ))
        return out

    # --- caller history ----------------------------------------------------------------

    async def caller_seen(self, tracker: str, caller: str) -> bool:
        return bool(await self._do(self.r.sismember(f"ctd:callers:{tracker}", caller)))

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        await self._do(self.r.sadd(f"ctd:callers:{tracker}", caller))

    # --- hunt round_robin: rotation counters (ctd:rr:<key>, INCR) ----------------------

    async def rotate(self, key: str) -> int:
        return int(await self._do(self.r.incr(f"ctd:rr:{key}")))


    async def _note_hold(self, hold: Hold | None, until: float) -> Hold | None:
        # written behind in one pipeline per 0.5 s (a round trip per reservation cost the
        # 1,000-visitor storm its pool connections). The scripts reply times as integers
        # (Lua numbers): a hold is kept by its session and whole second of start, with
        # the end the caller asked for (`_until`, exact)
        if hold is not None:
            self._queue_history(hold.number, hold.session_id, hold.started_at, until)
        return hold

    async def _note_release(self, number: str, session_id: str, now: float) -> None:
        h = await self._do(self.r.hmget(f"ctd:num:{number}", ["last", "last_start"]))
        if _s(h[0]) == session_id and h[1] is not None:
            self._queue_history(number, session_id, float(_s(h[1]) or 0), now)


    async def hold_history(self, number: str, now: float) -> list[Hold]:
        await self._flush_history()
        rows = await self._do(self.r.zrevrangebyscore(
            f"ctd:hist:{number}", "+inf", now - HISTORY_KEEP, withscores=True))
        if not rows:
            return []
        meta = await self._do(self.r.hmget(f"ctd:num:{number}", ["tracker", "pool"]))
        tracker, pool = _s(meta[0]) or "", _s(meta[1]) or ""
        out = []
        for member, until in rows:
            session, _, start = (_s(member) or "").partition(_SEP)
            out.append(Hold(number, session, tracker, pool, float(start), float(until)))
        return out

