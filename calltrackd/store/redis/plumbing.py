"""The Redis store's plumbing: the connection pool and scripts, opening and closing, what
is written behind (visit notes, holder history), the report backfill, and the helpers
every part uses.

The other parts (reservations.py, records.py, outbox.py) are mixins over this class; the
store itself (`RedisStore`, calltrackd/store/redis/__init__.py) is all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Self, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from calltrackd.backoff import Backoff
from calltrackd.store import redis_lua as lua
from calltrackd.store.base import (
    HISTORY_KEEP,
    HISTORY_MAX,
    Store,
    StoreError,
    backfill_loop,
    retention_loop,
    stop_task,
)
from calltrackd.store.codec import (
    decode_call,
    session_stats_source,
    timestamp,
)
from calltrackd.tracking.model import (
    CallRecord,
    VisitorSession,
)
from calltrackd.tracking.reports import (
    call_fact,
    encode_fact,
    visit_cell,
)

T = TypeVar("T")
SESSION_TTL = 30 * 86400
LEASE = 60.0
_SEP = "\x1f"
_NOTES_WINDOW = 0.05  # seconds visit notes wait to share a write
# Redis away: notes are retried after 0.1, 0.2, ... up to 5 s; newer notes win
_NOTES_RETRY = Backoff(2 * _NOTES_WINDOW, 5.0)
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


class RedisPlumbing:
    """Connections, scripts, write-behind: what every part of the store uses."""

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
    def from_url(cls, url: str, retention: float | None = None) -> Self:
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
        self._backfill_task = asyncio.create_task(backfill_loop(self._backfill),
                                                  name="redis-backfill")
        if self.retention:
            self._retention_task = asyncio.create_task(
                retention_loop(cast(Store, self), self.retention), name="redis-retention")

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

    async def _notes_loop(self) -> None:
        failures = 0
        while self._notes and self._r is not None:
            await asyncio.sleep(_NOTES_RETRY.compute(failures) if failures else _NOTES_WINDOW)
            try:
                await self._flush_notes()
                failures = 0
            except StoreError:
                failures += 1

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


    # --- holder history, visits, confidences ------------------------------------------
    # ctd:hist:N   ZSET "session<US>started_at" → until, per pool number (trimmed by age
    #              and count as the number is used)
    # ctd:visits:T ZSET session id → first_seen, per tracker (pruned after SESSION_TTL)

    @staticmethod
    def _index_visit(p: Any, session: VisitorSession) -> None:
        key = f"ctd:visits:{session.tracker}"
        p.zadd(key, {session.id: session.first_seen})
        p.zremrangebyscore(key, "-inf", session.first_seen - SESSION_TTL)


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

    async def _backfill(self) -> None:
        """What calls saved by an earlier version lack: their report facts here, and
        what the other parts add (callindex.py: the filter index)."""
        await self._backfill_batches()

    async def _backfill_batches(self) -> None:
        """Report facts for the calls recorded before this store kept them (`backfill_loop`):
        by 2,000, the progress in ctd:rbackfill (any node may do it)."""
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

