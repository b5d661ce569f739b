"""The shared store for several calltrackd nodes: Redis (redis.asyncio, hiredis parser).

Same behaviour as the SQLite store, built so that any node can serve any request:
- reservations are two sorted sets per pool (free numbers by the time they may be handed
  out, held numbers by expiry) changed only by Lua scripts (`redis_lua.py`), so allocation
  is atomic across nodes and takes the number idle longest;
- the webhook outbox is a sorted set of due deliveries; handing deliveries out leases them
  (their due time moves 60 s ahead in the same script), so two nodes polling together
  never send the same delivery at once, and a node that dies mid-delivery leaves the
  lease to expire and another node to retry. We chose the sorted-set lease over Streams
  consumer groups because deliveries are rescheduled at arbitrary times (backoff), which
  a stream models poorly (pending entries would have to be claimed and re-added);
- a CDR and its outbox rows are written by one script, so they land together.

Every Redis failure surfaces as StoreError within about a second (short socket timeouts):
the tracking service then keeps records in memory and calls go on (fail open).
Durability is Redis's: run it with `appendonly yes` (docs/redis.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from calltrackd.store import redis_lua as lua
from calltrackd.store.base import (
    HISTORY_KEEP,
    HISTORY_MAX,
    AttributionStats,
    CallStats,
    PoolStats,
    StoreError,
    Visit,
    VisitorStats,
    crm_json,
    decode_call,
    decode_cursor,
    decode_session,
    encode_call,
    encode_cursor,
    encode_session,
    retention_loop,
    session_stats_source,
    stop_task,
    storable_call,
    storable_session,
    timestamp,
    with_crm,
)
from calltrackd.tracking.model import (
    CallRecord,
    Hold,
    LastVisit,
    Tracker,
    VisitorSession,
    WebhookDelivery,
)
from calltrackd.tracking.reports import (
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitGroup,
    aggregate_encoded,
    aggregate_visits,
    call_fact,
    cents,
    encode_crm,
    encode_fact,
    visit_cell,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)
SESSION_TTL = 30 * 86400
BACKFILL_RETRY = 30.0  # seconds before a failed report backfill is tried again
LEASE = 60.0
_MAX_LIMIT = 1000
_SEP = "\x1f"
_NOTES_WINDOW = 0.05  # seconds visit notes wait to share a write
_NOTES_MAX = 100_000


def _hour(ts: float) -> str:
    return str(int(ts // 3600))


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    # "replace": stored bytes that are not UTF-8 never fail a read (/v1/stats included)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _stats_field(session: VisitorSession) -> str:
    src, med = session_stats_source(session)
    # the separator of the visitor counters' fields never comes from a visitor
    return f"{(src or '').replace(_SEP, ' ')}{_SEP}{(med or '').replace(_SEP, ' ')}"


class RedisStore:
    def __init__(self, url: str, retention: float | None = None) -> None:
        self.url = url
        self._r: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._history_queue: list[tuple[str, str, float, float]] = []  # holds to note
        self._history_task: asyncio.Task[None] | None = None
        # visit notes waiting to be written in one pipeline: key → (value, seconds)
        self._notes: dict[str, tuple[str, int]] = {}
        self._notes_task: asyncio.Task[None] | None = None
        self.node_id = "local"
        self.retention = retention
        self._retention_task: asyncio.Task[None] | None = None
        self._backfill_task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, retention: float | None = None) -> RedisStore:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"store.url: not a redis URL: {url!r}")
        return cls(url, retention)

    # --- plumbing ----------------------------------------------------------------------

    @property
    def r(self) -> aioredis.Redis:
        if self._r is None:
            raise StoreError("store is closed")
        return self._r

    async def _do(self, aw: Awaitable[T] | Any) -> Any:
        try:
            return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _script(self, name: str, *args: Any) -> Any:
        return await self._do(self._scripts[name](args=list(args)))

    async def open(self) -> None:
        # a bounded pool where a burst of requests waits for a connection (up to 1 s)
        # instead of opening hundreds or failing
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=64, timeout=1.0, socket_connect_timeout=0.5,
            socket_timeout=1.0, health_check_interval=5)
        self._r = aioredis.Redis.from_pool(pool)
        for name in ("RESERVE", "RESERVE_NUMBER", "RENEW", "RELEASE", "COUNTS", "SYNC_POOL",
                     "DROP_POOL", "LEASE_DUE", "UNLEASE", "SAVE_CALL"):
            self._scripts[name] = self._r.register_script(getattr(lua, name))
        self._backfill_task = asyncio.create_task(self._backfill_facts(), name="redis-backfill")
        if self.retention:
            self._retention_task = asyncio.create_task(
                retention_loop(self, self.retention), name="redis-retention")

    async def close(self) -> None:
        await stop_task(self._retention_task)
        await stop_task(self._backfill_task)
        self._retention_task = self._backfill_task = None
        if self._r is not None:
            with contextlib.suppress(StoreError):
                await self._flush_notes()
            with contextlib.suppress(StoreError):
                await self._flush_history()
            await self._r.aclose()
            self._r = None

    async def ping(self) -> None:
        await self._do(self.r.ping())

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

    async def _notes_loop(self) -> None:
        delay = _NOTES_WINDOW
        while self._notes and self._r is not None:
            await asyncio.sleep(delay)
            try:
                await self._flush_notes()
                delay = _NOTES_WINDOW
            except StoreError:
                delay = min(delay * 2, 5.0)  # Redis away: retried, newer notes win

    async def _flush_notes(self) -> None:
        notes, self._notes = self._notes, {}
        if not notes:
            return

        async def run() -> None:
            async with self.r.pipeline(transaction=False) as p:
                for key, (value, seconds) in notes.items():
                    p.set(key, value, ex=seconds)
                await p.execute()

        try:
            await self._do(run())
        except StoreError:
            for key, entry in notes.items():
                self._notes.setdefault(key, entry)
            raise

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

    # --- call records ------------------------------------------------------------------

    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        record = storable_call(record)  # without a field no store can write, never refused
        args: list[Any] = [record.id, record.tracker, timestamp(record.started_at),
                           record.caller if record.caller != "anonymous" else "",
                           encode_call(record), len(deliveries)]
        for d in deliveries:
            args += [d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at,
                     d.next_attempt_at, d.kind]
        # this node's open calls, for the restart after a crash (see open_calls)
        args += [f"ctd:open:{self.node_id}", "1" if record.outcome is None else "0"]
        fact = call_fact(record)

        async def run() -> None:
            # the CDR, its outbox rows and its report fact in one MULTI
            async with self.r.pipeline(transaction=True) as p:
                await self._scripts["SAVE_CALL"](args=args, client=p)
                p.hset(f"ctd:rf:{record.tracker}:{fact.day}", record.id, encode_fact(fact))
                p.zadd(f"ctd:rdays:{record.tracker}", {str(fact.day): fact.day})
                p.sadd("ctd:rtrackers", record.tracker)
                await p.execute()

        await self._do(run())

    async def get_call(self, call_id: str) -> CallRecord | None:
        raw = await self._do(self.r.get(f"ctd:call:{call_id}"))
        if not raw:
            return None
        record = decode_call(_s(raw) or "")
        return (await self._with_crm([record]))[0]

    async def _calls_in(self, tracker: str | None, since: datetime | None,
                        until: datetime | None, top: float | str | None = None,
                        batch: int = 500, offset: int = 0) -> list[tuple[str, float]]:
        key = f"ctd:calls:{tracker}" if tracker else "ctd:calls"
        hi: float | str = top if top is not None else (
            f"({timestamp(until)}" if until else "+inf")
        lo: float | str = timestamp(since) if since else "-inf"
        rows = await self._do(self.r.zrevrangebyscore(
            key, hi, lo, start=offset, num=batch, withscores=True))
        return [(_s(m) or "", float(sc)) for m, sc in rows]

    async def list_calls(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        limit = max(1, min(limit, _MAX_LIMIT))
        after: tuple[float, str] | None = decode_cursor(cursor) if cursor else None
        top: float | str | None = None
        if after is not None:
            top = after[0]
            if until is not None and timestamp(until) <= after[0]:
                top = f"({timestamp(until)}"
        found: list[tuple[CallRecord, float]] = []
        offset = 0
        while len(found) <= limit:
            rows = await self._calls_in(tracker, since, until, top, 500, offset)
            if not rows:
                break
            offset += len(rows)
            ids = [(cid, ts) for cid, ts in rows
                   if after is None or ts < after[0] or (ts == after[0] and cid < after[1])]
            if not ids:
                continue
            raws = await self._do(self.r.mget([f"ctd:call:{c}" for c, _ in ids]))
            recs = await self._with_crm([decode_call(_s(raw) or "") if raw else None
                                         for raw in raws])
            for (_cid, ts), rec in zip(ids, recs, strict=True):
                if rec is None:
                    continue
                if outcome is None or rec.outcome == outcome:
                    found.append((rec, ts))
                    if len(found) > limit:
                        break
        page = found[:limit]
        more = len(found) > limit
        return [r for r, _ in page], (encode_cursor(page[-1][1], page[-1][0].id)
                                      if more else None)

    # --- webhook outbox ----------------------------------------------------------------

    def _delivery(self, h: dict[Any, Any]) -> WebhookDelivery:
        f = {_s(k): v for k, v in h.items()}

        def s(name: str) -> str:
            return _s(f.get(name)) or ""

        return WebhookDelivery(
            id=s("id"), event_id=s("event_id"), event=s("event"), tracker=s("tracker"),
            url=s("url"), body=bytes(f.get("body") or b""),
            created_at=float(s("created_at") or 0), attempts=int(s("attempts") or 0),
            next_attempt_at=float(s("next_attempt_at") or 0),
            status=s("status") or "pending",  # type: ignore[arg-type]
            last_error=s("last_error") or None,
            kind=s("kind") or "webhook",  # rows written before kinds existed
        )

    async def _deliveries(self, ids: Sequence[str]) -> list[WebhookDelivery]:
        async def run() -> list[Any]:
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(f"ctd:dlv:{i}")
                return list(await p.execute())

        return [self._delivery(h) for h in await self._do(run()) if h]

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        ids = [_s(i) or "" for i in await self._script("LEASE_DUE", now, limit, LEASE,
                                                        *exclude_urls)]
        return await self._deliveries(ids) if ids else []

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        key = f"ctd:dlv:{delivery_id}"

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={"status": "delivered", "last_error": ""})
                p.hincrby(key, "attempts", 1)
                p.zrem("ctd:outbox:due", delivery_id)
                await p.execute()

        await self._do(run())

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        """`mark_delivered` for the rows one request carried, in one round trip."""
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                for delivery_id in delivery_ids:
                    key = f"ctd:dlv:{delivery_id}"
                    p.hset(key, mapping={"status": "delivered", "last_error": ""})
                    p.hincrby(key, "attempts", 1)
                p.zrem("ctd:outbox:due", *delivery_ids)
                await p.execute()

        if delivery_ids:
            await self._do(run())

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(f"ctd:dlv:{delivery_id}", mapping={
                    "attempts": attempts, "next_attempt_at": next_attempt_at,
                    "last_error": error})
                p.zadd("ctd:outbox:due", {delivery_id: next_attempt_at})
                await p.execute()

        await self._do(run())

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(f"ctd:dlv:{delivery_id}", mapping={
                    "status": "failed", "attempts": attempts, "last_error": error})
                p.zrem("ctd:outbox:due", delivery_id)
                await p.execute()

        await self._do(run())

    async def list_deliveries(self, status: str | None, limit: int,
                              kind: str | None = None) -> list[WebhookDelivery]:
        out: list[WebhookDelivery] = []
        offset = 0
        while len(out) < limit:
            ids = await self._do(self.r.zrevrange("ctd:outbox:all", offset, offset + 499))
            if not ids:
                break
            offset += len(ids)
            for d in await self._deliveries([_s(i) or "" for i in ids]):
                if (status is None or d.status == status) and (kind is None
                                                                or d.kind == kind):
                    out.append(d)
        return out[:limit]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        key = f"ctd:dlv:{delivery_id}"
        status = _s(await self._do(self.r.hget(key, "status")))
        if status not in ("failed", "pending"):
            return False

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={"status": "pending", "next_attempt_at": now})
                p.zadd("ctd:outbox:due", {delivery_id: now})
                await p.execute()

        await self._do(run())
        return True

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        if delivery_ids:
            await self._script("UNLEASE", *delivery_ids)

    async def pending_count(self) -> int:
        return int(await self._do(self.r.zcard("ctd:outbox:due")))

    # --- node liveness and crash recovery: per node id -----------------------------------

    async def heartbeat(self, now: float) -> None:
        await self._do(self.r.hset("ctd:heartbeat", self.node_id, repr(now)))

    async def last_heartbeat(self) -> float | None:
        raw = await self._do(self.r.hget("ctd:heartbeat", self.node_id))
        return float(_s(raw) or 0) if raw else None

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        key = f"ctd:open:{self.node_id}"
        ids = sorted(_s(m) or "" for m in await self._do(self.r.smembers(key)))
        out: list[CallRecord] = []
        stale: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            raws = await self._do(self.r.mget([f"ctd:call:{c}" for c in chunk]))
            for call_id, raw in zip(chunk, raws, strict=True):
                rec = decode_call(_s(raw) or "") if raw else None
                if rec is None or rec.outcome is not None:
                    stale.append(call_id)  # closed meanwhile (or gone)
                elif timestamp(rec.started_at) < started_before:
                    out.append(rec)
        if stale:
            await self._do(self.r.srem(key, *stale))
        return sorted(out, key=lambda r: r.started_at)

    # --- statistics --------------------------------------------------------------------

    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]:
        """Aggregated from the CDRs in the window (one pass; admin use)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        offset = 0
        while True:
            rows = await self._calls_in(tracker, since, until, None, 1000, offset)
            if not rows:
                break
            offset += len(rows)
            raws = await self._do(self.r.mget(
                [f"ctd:call:{c}" for c, _ in rows]))
            for raw in raws:
                if raw is None:
                    continue
                try:
                    rec = decode_call(_s(raw) or "")
                except (ValueError, KeyError, TypeError) as exc:  # stats never fail on one
                    log.warning("store.record_unreadable", error=repr(exc)[:200])
                    continue
                att = rec.attribution
                sess = att.session if att else None
                src, med = session_stats_source(sess) if sess else (None, None)
                key = (rec.tracker, att.kind if att else "none", att.channel if att else None,
                       src, med)
                g = groups.setdefault(key, [0, 0, 0, 0, 0])
                g[0] += 1
                g[1] += rec.outcome == "answered"
                g[2] += rec.outcome is not None and rec.outcome != "answered"
                g[3] += rec.qualified is True
                g[4] += rec.first_time_caller is True
        return [CallStats(*k, *v) for k, v in sorted(groups.items(),
                                                     key=lambda kv: (kv[0][0], -kv[1][0]))]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        """From hourly counters (hour granularity, like the pools' peaks)."""
        lo = int(timestamp(since) // 3600) if since else None
        hi = math.ceil(timestamp(until) / 3600) if until else None
        trackers = [tracker] if tracker else sorted(
            _s(k) or "" for k in await self._do(self.r.smembers("ctd:vtrackers")))
        acc: dict[tuple[str, str, str], list[int]] = {}
        for t in trackers:
            if lo is None or hi is None:
                keys = [_s(k) or "" for k in await self._do(self.r.keys(f"ctd:vis:{t}:*"))]
            else:
                keys = [f"ctd:vis:{t}:{h}" for h in range(lo, hi)]
            for key in keys:
                counts = await self._do(self.r.hgetall(key))
                for field_b, v in counts.items():
                    parts = (_s(field_b) or "").split(_SEP)
                    if len(parts) != 3:  # written by no version of ours: skipped
                        continue
                    src, med, what = parts
                    g = acc.setdefault((t, src, med), [0, 0])
                    g[0 if what == "all" else 1] += int(v)
        return [VisitorStats(t, src or None, med or None, v[0], v[1])
                for (t, src, med), v in sorted(acc.items(), key=lambda kv: (kv[0][0],
                                                                             -kv[1][0]))]

    # --- holder history, visits, confidences ------------------------------------------
    # ctd:hist:N   ZSET "session<US>started_at" → until, per pool number (trimmed by age
    #              and count as the number is used)
    # ctd:visits:T ZSET session id → first_seen, per tracker (pruned after SESSION_TTL)

    @staticmethod
    def _index_visit(p: Any, session: VisitorSession) -> None:
        key = f"ctd:visits:{session.tracker}"
        p.zadd(key, {session.id: session.first_seen})
        p.zremrangebyscore(key, "-inf", session.first_seen - SESSION_TTL)

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

    def _queue_history(self, number: str, session_id: str, start: float, until: float) -> None:
        self._history_queue.append((number, session_id, float(int(start)), until))
        if self._history_task is None or self._history_task.done():
            self._history_task = asyncio.create_task(self._flush_history_soon())

    async def _flush_history_soon(self) -> None:
        await asyncio.sleep(0.5)  # a read (hold_history) writes what waits first
        with contextlib.suppress(StoreError):  # put back: the next note or read retries
            await self._flush_history()

    async def _flush_history(self) -> None:
        batch, self._history_queue = self._history_queue, []
        if not batch:
            return

        async def run() -> None:
            async with self.r.pipeline(transaction=False) as p:
                for number, session, start, until in batch:
                    key = f"ctd:hist:{number}"
                    p.zadd(key, {f"{session}{_SEP}{start!r}": until})
                    p.zremrangebyscore(key, "-inf", start - HISTORY_KEEP)
                    p.zremrangebyrank(key, 0, -HISTORY_MAX - 1)
                    p.expire(key, int(HISTORY_KEEP) + 3600)
                await p.execute()

        try:
            await self._do(run())
        except StoreError:
            self._history_queue[:0] = batch[-10_000:]
            raise

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

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        ids = await self._do(self.r.zrangebyscore(f"ctd:visits:{tracker}", since,
                                                  f"({until}"))
        out: list[Visit] = []
        for i in range(0, len(ids), 500):
            chunk = [f"ctd:s:{_s(x)}" for x in ids[i:i + 500]]

            async def run(keys: list[str]) -> list[Any]:
                async with self.r.pipeline(transaction=False) as p:
                    for k in keys:
                        p.hget(k, "data")
                    return list(await p.execute())

            for raw in await self._do(run(chunk)):
                if raw:
                    s = decode_session(_s(raw) or "")
                    out.append(Visit(tracker, s.first_seen, s.last_seen,
                                     *session_stats_source(s)))
        return out

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        groups: dict[tuple[str, str | None, str], list[float]] = {}
        offset = 0
        while True:
            rows = await self._calls_in(tracker, since, until, None, 1000, offset)
            if not rows:
                break
            offset += len(rows)
            for raw in await self._do(self.r.mget([f"ctd:call:{c}" for c, _ in rows])):
                if raw is None:
                    continue
                rec = decode_call(_s(raw) or "")
                att = rec.attribution
                g = groups.setdefault((rec.tracker, att.pool if att else None,
                                       att.kind if att else "none"), [0, 0, 0.0])
                g[0] += 1
                if att is not None and att.confidence is not None:
                    g[1] += 1
                    g[2] += att.confidence
        return [AttributionStats(t, p, k, int(v[0]), int(v[1]), v[2])
                for (t, p, k), v in sorted(groups.items(), key=lambda kv: str(kv[0]))]

    # --- end of holder history ----------------------------------------------------------

    # --- reports, spend, CRM updates, retention --------------------------------------
    # ctd:rf:T:D  HASH call id -> report fact (reports.encode_fact) of tracker T, day D
    # ctd:ru:T:D  HASH call id -> CRM update: "crm" JSON (the call object) and the fact's
    #             CRM part (reports.encode_crm), as two fields "<id>" and "<id>\x1ef"
    # ctd:rv:T:D  HASH visit cell -> visitors;  ctd:rd:T:D  the same, given a pool number
    # ctd:rdays:T ZSET days with facts or visits;  ctd:rtrackers SET;  ctd:spend HASH

    async def _with_crm(self, records: Sequence[CallRecord | None]
                        ) -> list[CallRecord | None]:
        async def run() -> list[Any]:
            async with self.r.pipeline(transaction=False) as p:
                for rec in records:
                    if rec is not None:
                        p.hget(f"ctd:ru:{rec.tracker}:{_day(rec)}", rec.id)
                return list(await p.execute())

        crm = iter(await self._do(run()) if any(records) else [])
        return [None if rec is None else with_crm(rec, next(crm)) for rec in records]

    async def _backfill_facts(self) -> None:
        """Report facts for the calls recorded before this store kept them: once, by
        2,000 in the background, the progress in ctd:rbackfill (any node may do it)."""
        while True:
            try:
                await self._backfill_batches()
                return
            except (StoreError, ValueError) as exc:  # Redis away or slow: again soon
                log.warning("store.report_backfill_failed", error=repr(exc))
                await asyncio.sleep(BACKFILL_RETRY)

    async def _backfill_batches(self) -> None:
        while True:
            done = _s(await self._do(self.r.get("ctd:rbackfill")))
            if done == "done":
                return
            offset = int(done or 0)
            ids = [_s(i) or "" for i in await self._do(
                self.r.zrange("ctd:calls", offset, offset + 1999))]
            if not ids:
                await self._do(self.r.set("ctd:rbackfill", "done"))
                return
            raws = await self._do(self.r.mget([f"ctd:call:{i}" for i in ids]))
            async with self.r.pipeline(transaction=False) as p:
                for raw in raws:
                    if raw:
                        fact = call_fact(decode_call(_s(raw) or ""))
                        p.hsetnx(f"ctd:rf:{fact.tracker}:{fact.day}", fact.id,
                                 encode_fact(fact))
                        p.zadd(f"ctd:rdays:{fact.tracker}", {str(fact.day): fact.day})
                        p.sadd("ctd:rtrackers", fact.tracker)
                p.set("ctd:rbackfill", offset + len(ids))
                await self._do(p.execute())

    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        day = _day(record)
        key = f"ctd:ru:{record.tracker}:{day}"

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={record.id: crm_json(record),
                                     f"{record.id}\x1ef": encode_crm(record.tags,
                                                                     cents(record.value))})
                p.hsetnx(f"ctd:rf:{record.tracker}:{day}", record.id,
                         encode_fact(call_fact(record)))  # a call older than reports
                p.zadd(f"ctd:rdays:{record.tracker}", {str(day): day})
                p.sadd("ctd:rtrackers", record.tracker)
                for d in deliveries:
                    p.hsetnx(f"ctd:dlv:{d.id}", "id", d.id)
                    p.hset(f"ctd:dlv:{d.id}", mapping={
                        "event_id": d.event_id, "event": d.event, "tracker": d.tracker,
                        "url": d.url, "body": d.body, "created_at": d.created_at,
                        "next_attempt_at": d.next_attempt_at, "attempts": 0,
                        "status": "pending", "last_error": "", "kind": d.kind})
                    p.zadd("ctd:outbox:due", {d.id: d.next_attempt_at})
                    p.zadd("ctd:outbox:all", {d.id: d.created_at})
                await p.execute()

        await self._do(run())

    async def _report_keys(self, query: ReportQuery) -> list[tuple[str, int]]:
        trackers = [query.tracker] if query.tracker else sorted(
            _s(t) or "" for t in await self._do(self.r.smembers("ctd:rtrackers")))
        lo = int(query.since // 86400)
        hi: float | str = "+inf" if query.until == float("inf") else query.until // 86400
        out = []
        for t in trackers:
            days = await self._do(self.r.zrangebyscore(f"ctd:rdays:{t}", lo, hi))
            out += [(t, int(d)) for d in days]
        return out

    async def _day_of(self, *reads: tuple[str, str]) -> list[Any]:
        """One day's report hashes; a read that times out (a day is megabytes, the socket
        timeout one second) is tried twice more before the report fails."""
        for attempt in range(3):
            try:
                async with self.r.pipeline(transaction=False) as p:
                    for command, key in reads:
                        getattr(p, command)(key)
                    return list(await self._do(p.execute()))
            except StoreError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def report_calls(self, query: ReportQuery) -> list[CallGroup]:
        """Facts fetched a day at a time and aggregated in this process."""
        facts: list[bytes] = []
        crm: dict[bytes, bytes] = {}
        for tracker, day in await self._report_keys(query):
            vals, upd = await self._day_of(
                ("hvals", f"ctd:rf:{tracker}:{day}"), ("hgetall", f"ctd:ru:{tracker}:{day}"))
            facts += vals
            for k, v in upd.items():
                if k.endswith(b"\x1ef"):
                    crm[k[:-2]] = v
        return aggregate_encoded(facts, crm, query)

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        cells: list[tuple[list[str], int, int]] = []
        for tracker, day in await self._report_keys(query):
            visitors, dynamic = await self._day_of(
                ("hgetall", f"ctd:rv:{tracker}:{day}"), ("hgetall", f"ctd:rd:{tracker}:{day}"))
            for field, n in visitors.items():
                cell = (_s(field) or "").split(_SEP)
                cells.append((cell, int(n), int(dynamic.get(field) or 0)))
        return aggregate_visits(cells, query)

    async def put_spend(self, rows: Sequence[SpendRow]) -> None:
        if rows:
            await self._do(self.r.hset("ctd:spend", mapping={
                _SEP.join(r.key()): f"{r.amount_cents}{_SEP}{r.currency}" for r in rows}))

    async def list_spend(
        self, tracker: str | None = None, since_day: str | None = None,
        until_day: str | None = None,
    ) -> list[SpendRow]:
        out = []
        for field, value in (await self._do(self.r.hgetall("ctd:spend"))).items():
            t, day, source, medium, campaign = (_s(field) or "").split(_SEP)
            amount, currency = (_s(value) or "").split(_SEP)
            if ((tracker is None or t == tracker) and (since_day is None or day >= since_day)
                    and (until_day is None or day < until_day)):
                out.append(SpendRow(t, day, source, medium, campaign, int(amount), currency))
        return sorted(out, key=lambda r: r.key())

    async def purge_calls(self, before: float) -> int:
        """CDRs, their facts and updates, in batches of 5,000; visit counters by day."""
        total = 0
        trackers = {_s(t) or "" for t in await self._do(self.r.smembers("ctd:rtrackers"))}
        for tracker in sorted(trackers):
            while True:
                rows = await self._do(self.r.zrangebyscore(
                    f"ctd:calls:{tracker}", "-inf", f"({before}", start=0, num=5000,
                    withscores=True))
                if not rows:
                    break
                async with self.r.pipeline(transaction=True) as p:
                    for member, score in rows:
                        cid = _s(member) or ""
                        day = int(float(score) // 86400)
                        p.delete(f"ctd:call:{cid}")
                        p.hdel(f"ctd:rf:{tracker}:{day}", cid)
                        p.hdel(f"ctd:ru:{tracker}:{day}", cid, f"{cid}\x1ef")
                    ids = [m for m, _ in rows]
                    p.zrem(f"ctd:calls:{tracker}", *ids)
                    p.zrem("ctd:calls", *ids)
                    await self._do(p.execute())
                total += len(rows)
            cutoff = int(before // 86400)
            for d in await self._do(self.r.zrangebyscore(f"ctd:rdays:{tracker}", "-inf",
                                                         f"({cutoff}")):
                old = _s(d)
                await self._do(self.r.delete(*(f"ctd:{k}:{tracker}:{old}"
                                               for k in ("rf", "ru", "rv", "rd"))))
                await self._do(self.r.zrem(f"ctd:rdays:{tracker}", d))
        return total


def _day(record: CallRecord) -> int:
    return int(timestamp(record.started_at) // 86400)


def _count_visit(p: Any, session: VisitorSession, visitors: int, dynamic: int) -> None:
    """Add a visit to its cell's counters (in the caller's pipeline)."""
    cell = visit_cell(session)
    day = cell[0] // 24
    field = _SEP.join(map(str, cell))
    if visitors:
        p.hincrby(f"ctd:rv:{session.tracker}:{day}", field, visitors)
    if dynamic:
        p.hincrby(f"ctd:rd:{session.tracker}:{day}", field, dynamic)
    p.zadd(f"ctd:rdays:{session.tracker}", {str(day): day})
    p.sadd("ctd:rtrackers", session.tracker)
