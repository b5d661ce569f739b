"""The PostgreSQL store (asyncpg): call records, the webhook outbox and reports in a
database server, for report volumes the embedded store answers slowly.

- `[store] url = "postgresql://user:password@host:5432/dbname"` (also `postgres://`;
  libpq-style query options such as `?sslmode=require` are passed to asyncpg).
- Reservations, visitor sessions and returning visitors live in this process's memory
  (`MemoryState`, as on SQLite: an allocation is atomic on the event loop) and are
  written behind to the database every `flush_interval`, restored at start. So one
  daemon node per database: the store holds an advisory lock while open, and a second
  node's store refuses to open (it would hand out the same numbers). CDRs, open calls
  and heartbeats are kept per `node_id` all the same.
- CDRs, outbox rows, report facts and CRM updates are written through: `save_call`
  returns once its transaction committed; concurrent `save_call`s share a transaction.
  Handing out due deliveries leases them for `LEASE` seconds (`FOR UPDATE SKIP
  LOCKED`), so that a restarted worker or a second one never sends a row twice at once.
- Reports run in SQL over `report_calls` (one narrow row per call) and `report_visits`
  (visitor counters per hour and source); days and hours in the query's zone are
  computed from the timestamp (`reports.time_sql`).
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from calltrackd.store.base import (
    AttributionStats,
    CallStats,
    StoreError,
    Visit,
    VisitorStats,
    retention_loop,
    stop_task,
)
from calltrackd.store.codec import (
    crm_json,
    decode_call,
    decode_cursor,
    decode_session,
    encode_call,
    encode_cursor,
    encode_session,
    session_stats_source,
    storable_call,
    storable_session,
    timestamp,
    with_crm,
)
from calltrackd.store.memory import InMemoryReservations, MemoryState
from calltrackd.tracking.model import (
    CallRecord,
    LastVisit,
    NumberState,
    UsageBucket,
    VisitorSession,
    WebhookDelivery,
    is_anonymous,
)
from calltrackd.tracking.reports import (
    CallFact,
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitCell,
    VisitGroup,
    call_fact,
    cents,
    time_sql,
    visit_cell,
)

log = structlog.get_logger(__name__)

SCHEMES = ("postgresql://", "postgres://")
LEASE = 60.0  # seconds a delivery handed out stays the worker's
REPORT_WORK_MEM = "256MB"  # a report's hash tables (per statement, released at its end)
CDR_BATCH_WINDOW = 0.01  # seconds a call record may wait for others to share its write
_MAX_LIMIT = 1000
_SEEN_CALLERS_MAX = 100_000
_VISIT_SEEN_MAX = 200_000
_SCHEMA_LOCK = 0x63746470  # advisory lock id: one node creates the schema at a time
_NODE_LOCK = 0x6374646E  # advisory lock id held while open: one node per database
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
  id text PRIMARY KEY, tracker text NOT NULL, utm_source text, utm_medium text,
  first_seen float8 NOT NULL, last_seen float8 NOT NULL, dynamic boolean NOT NULL,
  data text NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_first_seen ON sessions (tracker, first_seen);
CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions (first_seen);
CREATE TABLE IF NOT EXISTS visitors (
  tracker text NOT NULL, key text NOT NULL, session_id text NOT NULL, number text,
  at float8 NOT NULL, expires float8 NOT NULL, PRIMARY KEY (tracker, key));
CREATE TABLE IF NOT EXISTS numbers (
  number text PRIMARY KEY, tracker text NOT NULL, pool text NOT NULL,
  holder text, held_since float8, expires_at float8,
  last_holder text, last_held_since float8, released_at float8);
CREATE TABLE IF NOT EXISTS pool_usage (
  tracker text NOT NULL, pool text NOT NULL, hour bigint NOT NULL,
  peak integer NOT NULL, shortfall integer NOT NULL, PRIMARY KEY (tracker, pool, hour));
CREATE TABLE IF NOT EXISTS callers (
  tracker text NOT NULL, caller text NOT NULL, first_call_at float8 NOT NULL,
  PRIMARY KEY (tracker, caller));
CREATE TABLE IF NOT EXISTS calls (
  id text PRIMARY KEY, tracker text NOT NULL, node text NOT NULL,
  started_ts float8 NOT NULL, outcome text, kind text, channel text, utm_source text,
  utm_medium text, qualified boolean, first_time boolean, att_pool text,
  confidence float8, data text NOT NULL);
CREATE INDEX IF NOT EXISTS calls_by_start ON calls (started_ts, id);
CREATE INDEX IF NOT EXISTS calls_by_tracker ON calls (tracker, started_ts, id);
CREATE INDEX IF NOT EXISTS calls_open ON calls (node, started_ts) WHERE outcome IS NULL;
CREATE TABLE IF NOT EXISTS deliveries (
  id text PRIMARY KEY, event_id text NOT NULL, event text NOT NULL, tracker text NOT NULL,
  url text NOT NULL, body bytea NOT NULL, created_at float8 NOT NULL,
  attempts integer NOT NULL, next_attempt_at float8 NOT NULL, status text NOT NULL,
  last_error text, kind text NOT NULL DEFAULT 'webhook', delivered_at float8,
  leased_until float8);
CREATE INDEX IF NOT EXISTS deliveries_pending_due ON deliveries (next_attempt_at, created_at)
  WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, created_at);
CREATE TABLE IF NOT EXISTS heartbeat (node text PRIMARY KEY, ts float8 NOT NULL);
CREATE TABLE IF NOT EXISTS report_calls (
  id text PRIMARY KEY, tracker text NOT NULL, ts float8 NOT NULL, day integer NOT NULL,
  hour smallint NOT NULL, did text, caller text, channel text, source text, medium text,
  campaign text, term text, content text, landing_page text, referrer_domain text,
  static_channel text, first_time boolean, outcome text, qualified boolean,
  ring_ms bigint, talk_ms bigint, value_cents bigint, crm text);
CREATE INDEX IF NOT EXISTS report_calls_by_tracker ON report_calls (tracker, ts);
CREATE INDEX IF NOT EXISTS report_calls_by_ts ON report_calls (ts);
CREATE TABLE IF NOT EXISTS call_tags (
  id text NOT NULL, tag text NOT NULL, PRIMARY KEY (id, tag));
CREATE INDEX IF NOT EXISTS call_tags_by_tag ON call_tags (tag, id);
CREATE TABLE IF NOT EXISTS report_visits (
  tracker text NOT NULL, hour bigint NOT NULL, channel text NOT NULL, source text NOT NULL,
  medium text NOT NULL, campaign text NOT NULL, term text NOT NULL, content text NOT NULL,
  landing_page text NOT NULL, referrer_domain text NOT NULL, visitors bigint NOT NULL,
  dynamic bigint NOT NULL,
  PRIMARY KEY (tracker, hour, channel, source, medium, campaign, term, content,
               landing_page, referrer_domain));
CREATE TABLE IF NOT EXISTS spend (
  tracker text NOT NULL, day text NOT NULL, source text NOT NULL, medium text NOT NULL,
  campaign text NOT NULL, amount_cents bigint NOT NULL, currency text NOT NULL,
  PRIMARY KEY (tracker, day, source, medium, campaign));
"""

_CALL_COLS = ("id", "tracker", "node", "started_ts", "outcome", "kind", "channel",
              "utm_source", "utm_medium", "qualified", "first_time", "att_pool",
              "confidence", "data")
_FACT_COLS = ("id", "tracker", "ts", "day", "hour", "did", "caller", "channel", "source",
              "medium", "campaign", "term", "content", "landing_page", "referrer_domain",
              "static_channel", "first_time", "outcome", "qualified", "ring_ms", "talk_ms")
_VISIT_COLS = ("channel", "source", "medium", "campaign", "term", "content", "landing_page",
               "referrer_domain")
_DELIVERY_COLS = ("id", "event_id", "event", "tracker", "url", "body", "created_at",
                  "attempts", "next_attempt_at", "status", "last_error", "kind")


def _marks(n: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + n))


def _upsert(table: str, cols: Sequence[str], keep: int = 1) -> str:
    """INSERT of every column that replaces a stored row's columns after the key."""
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({_marks(len(cols))})"
            f" ON CONFLICT (id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[keep:]))


_CALL_UPSERT = _upsert("calls", _CALL_COLS)
_FACT_UPSERT = _upsert("report_calls", _FACT_COLS)
_DELIVERY_INSERT = (f"INSERT INTO deliveries ({', '.join(_DELIVERY_COLS)})"
                    f" VALUES ({_marks(len(_DELIVERY_COLS))}) ON CONFLICT (id) DO NOTHING")
_CALLER_INSERT = "INSERT INTO callers VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
_SELECT_DELIVERY = ", ".join(_DELIVERY_COLS)
_CALL_WITH_CRM = ("SELECT c.started_ts, c.id, c.data, r.crm FROM calls c"
                  " LEFT JOIN report_calls r ON r.id = c.id")

_number_row = operator.attrgetter(*(f.name for f in fields(NumberState)))
_usage_row = operator.attrgetter(*(f.name for f in fields(UsageBucket)))


def _t(value: str | None) -> str | None:
    """Text as PostgreSQL takes it: without NUL characters (the only ones it refuses)."""
    return value.replace("\x00", "") if value and "\x00" in value else value


def _fact_row(f: CallFact) -> tuple[Any, ...]:
    return (f.id, f.tracker, f.ts, f.day, f.hour, *map(_t, (
        f.did, f.caller, f.channel, f.source, f.medium, f.campaign, f.term, f.content,
        f.landing_page, f.referrer_domain, f.static_channel)), f.first_time,
        _t(f.outcome), f.qualified, f.ring_ms, f.talk_ms)


def _delivery_row(d: WebhookDelivery) -> tuple[Any, ...]:
    return (d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at, d.attempts,
            d.next_attempt_at, d.status, _t(d.last_error), d.kind)


def _delivery(r: asyncpg.Record) -> WebhookDelivery:
    return WebhookDelivery(
        id=r[0], event_id=r[1], event=r[2], tracker=r[3], url=r[4], body=bytes(r[5]),
        created_at=r[6], attempts=r[7], next_attempt_at=r[8], status=r[9],
        last_error=r[10], kind=r[11])


class _Args:
    """Positional parameters of one statement ($1, $2, ...)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _floor(x: str) -> str:
    return f"floor({x})::integer"


def _report_sql(q: ReportQuery) -> tuple[str, str, list[Any]]:
    """Two SELECTs over `report_calls` that together compute the `CallGroup`s of
    `aggregate_calls`: the sums by key (a hash aggregation), and the unique callers by
    key (distinct (key, caller) pairs, counted). One count(DISTINCT) in the first would
    make PostgreSQL sort all rows by key and caller: four times slower at 1M calls."""
    a = _Args()
    exprs: list[str] = []
    joins = ""
    for dim in q.group_by:
        if local := time_sql(dim, q, _floor):  # the query's local time, not UTC's
            exprs.append(local)
        elif dim == "weekday":
            exprs.append("((r.day + 3) % 7 + 1)")
        elif dim == "tag":
            exprs.append("t.tag")
            joins += " LEFT JOIN call_tags t ON t.id = r.id"
        elif dim == "pool":
            joins += (f" LEFT JOIN unnest({a(list(q.pools), '::text[]')},"
                      f" {a(list(q.pools.values()), '::text[]')}) AS p(number, pool)"
                      " ON p.number = r.did")
            exprs.append("p.pool")
        else:
            exprs.append(f"r.{dim}")
    conds = [f"r.ts >= {a(q.since, '::float8')}"]
    if q.tracker is not None:
        conds.append(f"r.tracker = {a(q.tracker)}")
    if q.until != float("inf"):
        conds.append(f"r.ts < {a(q.until, '::float8')}")
    for dim, accepted in sorted(q.filters.items()):
        values = sorted(accepted, key=repr)
        if dim == "tag":
            conds.append(f"r.id IN (SELECT id FROM call_tags WHERE tag = ANY({a(values)}))")
            if "tag" in q.group_by:  # grouped by tag too: only the tags asked for
                conds.append(f"t.tag = ANY({a(values, '::text[]')})")
        elif dim == "pool":
            numbers = sorted(n for n, p in q.pools.items() if p in accepted)
            conds.append(f"r.did = ANY({a(numbers, '::text[]')})")
        elif dim == "first_time":
            conds.append(f"r.first_time = ANY({a(values, '::boolean[]')})")
        elif local := time_sql(dim, q, _floor):
            conds.append(f"{local} = ANY({a(values, '::integer[]')})")
        elif dim == "weekday":
            conds.append(f"((r.day + 3) % 7 + 1) = ANY({a(values, '::integer[]')})")
        elif dim in ("day", "hour"):
            conds.append(f"r.{dim} = ANY({a(values, '::integer[]')})")
        else:
            conds.append(f"r.{dim} = ANY({a(values, '::text[]')})")
    keys = "".join(f"{e}, " for e in exprs)
    numbered = ", ".join(str(i + 1) for i in range(len(exprs)))
    group = f" GROUP BY {numbered}" if exprs else ""
    source = f" FROM report_calls r{joins} WHERE {' AND '.join(conds)}"
    sums = (
        f"SELECT {keys}count(*), count(*) FILTER (WHERE r.outcome = 'answered'),"
        " count(*) FILTER (WHERE r.outcome <> 'answered'),"
        " count(*) FILTER (WHERE r.qualified), count(*) FILTER (WHERE r.first_time),"
        " coalesce(sum(r.ring_ms), 0), count(r.ring_ms),"
        f" coalesce(sum(r.talk_ms), 0), count(r.talk_ms), coalesce(sum(r.value_cents), 0)"
        f"{source}{group}"
    )
    aliased = "".join(f"{e} AS k{i}, " for i, e in enumerate(exprs))
    outer = "".join(f"k{i}, " for i in range(len(exprs)))
    callers = (f"SELECT {outer}count(*) FROM (SELECT DISTINCT {aliased}r.caller{source}"
               f" AND r.caller IS NOT NULL) AS pairs{group}")
    return sums, callers, a.values


def _visits_sql(q: ReportQuery) -> tuple[str, list[Any]]:
    """The SELECT of `report_visits` computing `VisitGroup`s as `aggregate_visits` does
    (a cell's time is its hour's start)."""
    a = _Args()

    def expr(dim: str) -> str:
        if local := time_sql(dim, q, _floor, column="(v.hour * 3600)"):
            return local
        if dim == "hour":
            return "(v.hour % 24)::integer"
        if dim == "day":
            return "floor(v.hour / 24.0)::integer"
        if dim == "weekday":
            return "((floor(v.hour / 24.0)::integer + 3) % 7 + 1)"
        return f"nullif(v.{dim}, '')"

    exprs = [expr(d) for d in q.group_by]
    conds = [f"v.hour >= {a(int(q.since // 3600))}"]
    if q.until != float("inf"):
        conds.append(f"v.hour * 3600 < {a(q.until, '::float8')}")
    if q.tracker is not None:
        conds.append(f"v.tracker = {a(q.tracker)}")
    for dim, accepted in sorted(q.filters.items()):
        values = sorted(accepted, key=repr)
        cast = "::integer[]" if dim in ("day", "hour", "weekday") else "::text[]"
        conds.append(f"{expr(dim)} = ANY({a(values, cast)})")
    keys = "".join(f"{e}, " for e in exprs)
    group = " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs))) if exprs else ""
    return (f"SELECT {keys}coalesce(sum(v.visitors), 0), coalesce(sum(v.dynamic), 0),"
            f" count(*) FROM report_visits v WHERE {' AND '.join(conds)}{group}", a.values)


_CdrItem = tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[str, str, float] | None,
                 tuple[Any, ...], asyncio.Future[None]]
_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class PostgresStore(InMemoryReservations):
    """`Store` over a PostgreSQL database (asyncpg connection pool); reservations in
    memory (`InMemoryReservations`)."""

    def __init__(self, dsn: str, *, flush_interval: float = 0.2,
                 retention: float | None = None, pool_size: int = 8) -> None:
        if not dsn.startswith(SCHEMES):
            raise ValueError(f"store.url: not a postgresql URL: {dsn!r}")
        self.dsn = dsn
        self.retention = retention
        self.node_id = "local"
        self._flush_interval = flush_interval
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._mem = MemoryState()
        self._seen_callers: set[tuple[str, str]] = set()
        self._cdr_queue: list[_CdrItem] = []
        self._cdr_task: asyncio.Task[None] | None = None
        self._behind_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._visit_keep = 0.0
        self._last_prune = 0.0
        self._visits_pending: dict[tuple[str, VisitCell], list[int]] = {}
        self._visit_seen: OrderedDict[str, tuple[str, VisitCell, bool]] = OrderedDict()
        self._flush_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, retention: float | None = None) -> PostgresStore:
        return cls(url, retention=retention)

    # --- plumbing ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; the database's trouble is a StoreError."""
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire(timeout=10) as conn:
                yield conn
        except _ERRORS as exc:
            raise StoreError(f"postgresql: {exc!r}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as c:
            rows: list[asyncpg.Record] = await c.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn() as c:
            row: asyncpg.Record | None = await c.fetchrow(sql, *args)
            return row

    async def _execute(self, sql: str, *args: Any) -> int:
        """The number of rows the statement changed."""
        async with self._conn() as c:
            status: str = await c.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    def _check_open(self) -> None:
        if self._pool is None:
            raise StoreError("store is closed")

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self._pool_size, command_timeout=60)
        except _ERRORS as exc:
            raise StoreError(f"postgresql: cannot connect: {exc!r}") from exc
        try:
            await self._take_node_lock()
            async with self._conn() as c, c.transaction():
                await c.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                await c.execute(_SCHEMA)
                version = await c.fetchval("SELECT max(version) FROM schema_version")
                if version is None:
                    await c.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)
                elif version > SCHEMA_VERSION:
                    raise StoreError(f"schema version {version} is newer than this build")
                states = [NumberState(*r) for r in await c.fetch("SELECT * FROM numbers")]
                usage = [UsageBucket(*r) for r in await c.fetch("SELECT * FROM pool_usage")]
        except BaseException:
            await self.close()
            raise
        self._mem.load(states, usage)
        self._behind_task = asyncio.create_task(self._behind_loop(), name="pg-behind")
        if self.retention:
            self._retention_task = asyncio.create_task(
                retention_loop(self, self.retention), name="pg-retention")

    async def _take_node_lock(self) -> None:
        """Hold the database's node lock on a connection of its own while open: a second
        node would hand out the numbers this one holds in memory."""
        try:
            self._lock_conn = await asyncpg.connect(self.dsn, timeout=10)
            taken = await self._lock_conn.fetchval(f"SELECT pg_try_advisory_lock({_NODE_LOCK})")
        except _ERRORS as exc:
            raise StoreError(f"postgresql: {exc!r}") from exc
        if not taken:
            raise StoreError("store.url: another calltrackd node has this database open (one"
                             " node per PostgreSQL database: reservations live in its memory)")

    async def close(self) -> None:
        """Flush what is written behind and close; a no-op when not open."""
        await stop_task(self._retention_task)
        await stop_task(self._behind_task)
        self._retention_task = self._behind_task = None
        if self._cdr_task is not None:
            with contextlib.suppress(Exception):
                await self._cdr_task
        try:
            if self._pool is not None:
                await self._flush_behind()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                with contextlib.suppress(*_ERRORS):
                    await asyncio.wait_for(pool.close(), 10)
            lock, self._lock_conn = self._lock_conn, None
            if lock is not None:  # closing the session releases the node lock
                with contextlib.suppress(*_ERRORS):
                    await asyncio.wait_for(lock.close(), 10)

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    # --- write-behind: numbers, pool usage, sessions, visit counters ------------------

    def _kick(self) -> None:
        if self._mem.backlog() > 2000:
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
            await self._flush_once()

    async def _flush_once(self) -> None:
        ch = self._mem.take_changes()
        visits, self._visits_pending = self._visits_pending, {}
        if not ch and not visits:
            return
        prune = None
        if ch.visits and self._last_prune + 3600 < (now := time.time()):
            self._last_prune, prune = now, now
        try:
            async with self._conn() as c, c.transaction():
                if ch.numbers:
                    await c.executemany(
                        f"INSERT INTO numbers VALUES ({_marks(9)}) ON CONFLICT (number) DO"
                        " UPDATE SET tracker = EXCLUDED.tracker, pool = EXCLUDED.pool,"
                        " holder = EXCLUDED.holder, held_since = EXCLUDED.held_since,"
                        " expires_at = EXCLUDED.expires_at, last_holder = EXCLUDED.last_holder,"
                        " last_held_since = EXCLUDED.last_held_since,"
                        " released_at = EXCLUDED.released_at",
                        [_number_row(s) for s in ch.numbers])
                if ch.gone_numbers:
                    await c.execute("DELETE FROM numbers WHERE number = ANY($1::text[])",
                                    list(ch.gone_numbers))
                if ch.usage:
                    await c.executemany(
                        "INSERT INTO pool_usage VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT (tracker, pool, hour) DO UPDATE"
                        " SET peak = EXCLUDED.peak, shortfall = EXCLUDED.shortfall",
                        [_usage_row(b) for b in ch.usage])
                if ch.sessions:
                    await c.executemany(
                        f"INSERT INTO sessions VALUES ({_marks(8)}) ON CONFLICT (id) DO UPDATE"
                        " SET last_seen = greatest(sessions.last_seen, EXCLUDED.last_seen),"
                        " dynamic = sessions.dynamic OR EXCLUDED.dynamic",
                        [(s.id, s.tracker, *map(_t, session_stats_source(s)), s.first_seen,
                          s.last_seen, d, _t(encode_session(s)))
                         for s, d in ch.sessions.values()])
                if ch.updates:
                    await c.executemany("UPDATE sessions SET data = $2 WHERE id = $1",
                                        [(sid, _t(encode_session(s)))
                                         for sid, s in ch.updates.items()])
                if ch.visits:
                    await c.executemany(
                        "INSERT INTO visitors VALUES ($1, $2, $3, $4, $5, $6)"
                        " ON CONFLICT (tracker, key) DO UPDATE SET"
                        " session_id = EXCLUDED.session_id, number = EXCLUDED.number,"
                        " at = EXCLUDED.at, expires = EXCLUDED.expires",
                        [(t, _t(k), v.session_id, v.number, v.at, v.at + self._visit_keep)
                         for (t, k), v in ch.visits.items()])
                if prune is not None:
                    await c.execute("DELETE FROM visitors WHERE expires < $1", prune)
                if ch.touches:
                    await c.executemany(
                        "UPDATE sessions SET last_seen = greatest(last_seen, $2),"
                        " dynamic = dynamic OR $3 WHERE id = $1",
                        [(sid, seen, d) for sid, (seen, d) in ch.touches.items()])
                if visits:
                    await c.executemany(
                        f"INSERT INTO report_visits VALUES ({_marks(12)})"
                        " ON CONFLICT (tracker, hour, channel, source, medium, campaign, term,"
                        " content, landing_page, referrer_domain) DO UPDATE SET"
                        " visitors = report_visits.visitors + EXCLUDED.visitors,"
                        " dynamic = report_visits.dynamic + EXCLUDED.dynamic",
                        [(tracker, cell[0], *map(_t, cell[1:]), n, d)
                         for (tracker, cell), (n, d) in visits.items()])
        except BaseException:
            self._mem.put_back(ch)
            for key, (n, d) in visits.items():
                counts = self._visits_pending.setdefault(key, [0, 0])
                counts[0] += n
                counts[1] += d
            raise

    # --- sessions and visits (in memory, written behind) ------------------------------

    async def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        self._check_open()
        session = storable_session(session)
        self._mem.create_session(session, dynamic)
        cell = visit_cell(session)
        counts = self._visits_pending.setdefault((session.tracker, cell), [0, 0])
        counts[0] += 1
        counts[1] += dynamic
        self._remember_visit(session.id, (session.tracker, cell, dynamic))
        self._kick()

    def _remember_visit(self, session_id: str, seen: tuple[str, VisitCell, bool]) -> None:
        self._visit_seen[session_id] = seen
        if len(self._visit_seen) > _VISIT_SEEN_MAX:
            self._visit_seen.popitem(last=False)

    async def get_session(self, session_id: str) -> VisitorSession | None:
        session = self._mem.get_session(session_id)
        if session is not None:
            return session
        row = await self._fetchrow("SELECT data, last_seen FROM sessions WHERE id = $1",
                                   session_id)
        if row is None:
            return None
        return self._mem.remember(decode_session(row[0]).seen(row[1]))

    async def touch_session(self, session_id: str, now: float, dynamic: bool = False) -> None:
        self._check_open()
        self._mem.touch_session(session_id, now, dynamic)
        if dynamic:
            await self._count_dynamic(session_id)
        self._kick()

    async def _count_dynamic(self, session_id: str) -> None:
        """A session got a pool number: count it once in its visit cell."""
        seen = self._visit_seen.get(session_id)
        if seen is None:  # older than this process remembers: the sessions table knows
            row = await self._fetchrow("SELECT data, dynamic FROM sessions WHERE id = $1",
                                       session_id)
            if row is None:
                return
            session = decode_session(row[0])
            seen = (session.tracker, visit_cell(session), bool(row[1]))
            self._remember_visit(session_id, seen)
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
            rows = await self._fetch(
                "SELECT key, session_id, number, at FROM visitors"
                " WHERE tracker = $1 AND key = ANY($2::text[])", tracker, list(unknown))
            for key, session_id, number, at in rows:
                visit = LastVisit(session_id, number, at)
                self._mem.remember_visit(tracker, key, visit)
                if best is None or visit.at > best.at:
                    best = visit
        return best

    # --- caller history --------------------------------------------------------------

    async def caller_seen(self, tracker: str, caller: str) -> bool:
        key = (tracker, caller)
        if key in self._seen_callers:
            return True
        seen = await self._fetchrow(
            "SELECT 1 FROM callers WHERE tracker = $1 AND caller = $2", tracker, _t(caller))
        if seen is not None:
            if len(self._seen_callers) >= _SEEN_CALLERS_MAX:
                self._seen_callers.clear()
            self._seen_callers.add(key)
        return seen is not None

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        await self._execute(_CALLER_INSERT, tracker, _t(caller), now)

    # --- call records: written through, group-committed ------------------------------

    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        self._check_open()
        record = storable_call(record)
        att = record.attribution
        session = att.session if att else None
        started = timestamp(record.started_at)
        row = (record.id, _t(record.tracker), self.node_id, started, record.outcome,
               att.kind if att else None, _t(att.channel) if att else None,
               *map(_t, session_stats_source(session) if session else (None, None)),
               record.qualified, record.first_time_caller,
               _t(att.pool) if att else None, att.confidence if att else None,
               _t(encode_call(record)))
        caller = None if is_anonymous(record.caller) else (
            record.tracker, _t(record.caller) or "", started)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._cdr_queue.append((row, [_delivery_row(d) for d in deliveries], caller,
                                _fact_row(call_fact(record)), done))
        if self._cdr_task is None or self._cdr_task.done():
            self._cdr_task = asyncio.create_task(self._drain_calls(), name="pg-cdrs")
        await done

    async def _drain_calls(self) -> None:
        while self._cdr_queue:
            await asyncio.sleep(CDR_BATCH_WINDOW)  # the records of the window share a write
            batch, self._cdr_queue = self._cdr_queue, []
            try:
                await self._write_calls(batch)
                errors: list[BaseException | None] = [None] * len(batch)
            except StoreError as exc:  # the database is away: every record fails
                errors = [exc] * len(batch)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError):
                errors = []  # a row refused: each record alone, so it fails alone
                for item in batch:
                    try:
                        await self._write_calls([item])
                        errors.append(None)
                    except Exception as exc:
                        errors.append(exc if isinstance(exc, StoreError)
                                      else StoreError(f"postgresql: {exc!r}"))
            for (*_, done), error in zip(batch, errors, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def _write_calls(self, batch: list[_CdrItem]) -> None:
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire(timeout=10) as c, c.transaction():
                await c.executemany(_CALL_UPSERT, [item[0] for item in batch])
                drows = [d for item in batch for d in item[1]]
                if drows:
                    await c.executemany(_DELIVERY_INSERT, drows)
                callers = [item[2] for item in batch if item[2] is not None]
                if callers:
                    await c.executemany(_CALLER_INSERT, callers)
                await c.executemany(_FACT_UPSERT, [item[3] for item in batch])
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.ConnectionDoesNotExistError) as exc:
            raise StoreError(f"postgresql: {exc!r}") from exc

    async def get_call(self, call_id: str) -> CallRecord | None:
        row = await self._fetchrow(f"{_CALL_WITH_CRM} WHERE c.id = $1", call_id)
        return with_crm(decode_call(row[2]), row[3]) if row else None

    async def list_calls(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        a = _Args()
        conds = self._window(a, tracker, since, until, "c.")
        if outcome is not None:
            conds.append(f"c.outcome = {a(outcome)}")
        match = where or {}
        for key in ("channel", "source", "campaign"):  # as the report facts have them
            if key in match:
                conds.append(f"r.{key} = {a(match[key])}")
        if "tag" in match:
            conds.append("EXISTS (SELECT 1 FROM call_tags t WHERE t.id = c.id"
                         f" AND t.tag = {a(match['tag'])})")
        if cursor is not None:
            ts, call_id = decode_cursor(cursor)
            conds.append(f"(c.started_ts, c.id) < ({a(ts, '::float8')}, {a(call_id)})")
        limit = max(1, min(limit, _MAX_LIMIT))
        clause = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            f"{_CALL_WITH_CRM}{clause} ORDER BY c.started_ts DESC, c.id DESC"
            f" LIMIT {a(limit + 1)}", *a.values)
        page = rows[:limit]
        more = len(rows) > limit
        return [with_crm(decode_call(r[2]), r[3]) for r in page], (
            encode_cursor(page[-1][0], page[-1][1]) if more else None)

    @staticmethod
    def _window(a: _Args, tracker: str | None, since: datetime | None,
                until: datetime | None, prefix: str = "", col: str = "started_ts") -> list[str]:
        conds = []
        if tracker is not None:
            conds.append(f"{prefix}tracker = {a(tracker)}")
        if since is not None:
            conds.append(f"{prefix}{col} >= {a(timestamp(since), '::float8')}")
        if until is not None:
            conds.append(f"{prefix}{col} < {a(timestamp(until), '::float8')}")
        return conds

    # --- webhook outbox (leased to the worker that took it) ---------------------------

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        rows = await self._fetch(
            f"WITH due AS (SELECT id FROM deliveries WHERE status = 'pending'"
            " AND next_attempt_at <= $1 AND (leased_until IS NULL OR leased_until <= $1)"
            " AND NOT (url = ANY($3::text[])) ORDER BY next_attempt_at, created_at"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE deliveries d SET leased_until = $1 + $4::float8 FROM due"
            f" WHERE d.id = due.id RETURNING {', '.join('d.' + c for c in _DELIVERY_COLS)}",
            now, limit, list(exclude_urls), LEASE)
        out = [_delivery(r) for r in rows]
        out.sort(key=lambda d: (d.next_attempt_at, d.created_at))
        return out

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        await self.mark_delivered_many([delivery_id], now)

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
            " delivered_at = $2, last_error = NULL, leased_until = NULL"
            " WHERE id = ANY($1::text[])", list(delivery_ids), now)

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'pending', attempts = $2, next_attempt_at = $3,"
            " last_error = $4, leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, attempts, next_attempt_at, _t(error))

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'failed', attempts = $2, last_error = $3,"
            " leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, attempts, _t(error))

    async def list_deliveries(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[WebhookDelivery]:
        a = _Args()
        conds = [f"{col} = {a(v)}" for col, v in (("status", status), ("kind", kind)) if v]
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        limit = max(1, min(limit, _MAX_LIMIT))
        rows = await self._fetch(
            f"SELECT {_SELECT_DELIVERY} FROM deliveries{where}"
            f" ORDER BY created_at DESC, id DESC LIMIT {a(limit)}", *a.values)
        return [_delivery(r) for r in rows]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        return await self._execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $2,"
            " leased_until = NULL WHERE id = $1 AND status <> 'delivered'",
            delivery_id, now) > 0

    async def pending_count(self) -> int:
        row = await self._fetchrow("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        return int(row[0]) if row else 0

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        if delivery_ids:
            await self._execute("UPDATE deliveries SET leased_until = NULL"
                                " WHERE id = ANY($1::text[])", list(delivery_ids))

    # --- node liveness and crash recovery ---------------------------------------------

    async def heartbeat(self, now: float) -> None:
        await self._execute("INSERT INTO heartbeat VALUES ($1, $2) ON CONFLICT (node)"
                            " DO UPDATE SET ts = EXCLUDED.ts", self.node_id, now)

    async def last_heartbeat(self) -> float | None:
        row = await self._fetchrow("SELECT ts FROM heartbeat WHERE node = $1", self.node_id)
        return float(row[0]) if row else None

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        rows = await self._fetch(
            "SELECT data FROM calls WHERE node = $1 AND outcome IS NULL AND started_ts < $2"
            " ORDER BY started_ts", self.node_id, started_before)
        return [decode_call(r[0]) for r in rows]

    # --- statistics ------------------------------------------------------------------

    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]:
        a = _Args()
        conds = self._window(a, tracker, since, until)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            "SELECT tracker, coalesce(kind, 'none'), channel, utm_source, utm_medium, count(*),"
            " count(*) FILTER (WHERE outcome = 'answered'),"
            " count(*) FILTER (WHERE outcome <> 'answered'), count(*) FILTER (WHERE qualified),"
            f" count(*) FILTER (WHERE first_time) FROM calls{where}"
            " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 6 DESC", *a.values)
        return [CallStats(*r) for r in rows]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        try:
            await self._flush_behind()  # sessions are written behind: count the newest too
        except Exception as exc:
            log.warning("store.write_behind_failed", error=repr(exc))
        a = _Args()
        conds = self._window(a, tracker, since, until, col="first_seen")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            "SELECT tracker, utm_source, utm_medium, count(*), count(*) FILTER (WHERE dynamic)"
            f" FROM sessions{where} GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC", *a.values)
        return [VisitorStats(*r) for r in rows]

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        await self._flush_behind()
        rows = await self._fetch(
            "SELECT first_seen, last_seen, utm_source, utm_medium FROM sessions"
            " WHERE tracker = $1 AND first_seen >= $2 AND first_seen < $3 ORDER BY first_seen",
            tracker, since, until)
        return [Visit(tracker, *r) for r in rows]

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        a = _Args()
        conds = self._window(a, tracker, since, until)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            "SELECT tracker, att_pool, coalesce(kind, 'none'), count(*), count(confidence),"
            f" coalesce(sum(confidence), 0) FROM calls{where} GROUP BY 1, 2, 3", *a.values)
        return [AttributionStats(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    # --- reports, spend, CRM updates, retention --------------------------------------

    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        crm, value = crm_json(record), cents(record.value)
        async with self._conn() as c, c.transaction():
            status = await c.execute(
                "UPDATE report_calls SET crm = $2, value_cents = $3 WHERE id = $1",
                record.id, _t(crm), value)
            if status.endswith(" 0"):  # no fact yet (the record is older than its CDR)
                await c.execute(_FACT_UPSERT, *_fact_row(call_fact(storable_call(record))))
                await c.execute("UPDATE report_calls SET crm = $2, value_cents = $3"
                                " WHERE id = $1", record.id, _t(crm), value)
            await c.execute("DELETE FROM call_tags WHERE id = $1", record.id)
            if record.tags:
                await c.execute("INSERT INTO call_tags SELECT $1, t FROM unnest($2::text[]) t"
                                " ON CONFLICT DO NOTHING", record.id,
                                [_t(t) for t in record.tags])
            if deliveries:
                await c.executemany(_DELIVERY_INSERT, [_delivery_row(d) for d in deliveries])

    async def _report_fetch(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        """A report's statement, with memory to hash its groups (the server's default of
        4 MB would spill them to disk) and without JIT compilation (its 0.1-0.3 s is more
        than it saves on these plans)."""
        async with self._conn() as c, c.transaction(readonly=True):
            await c.execute(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'; SET LOCAL jit = off")
            rows: list[asyncpg.Record] = await c.fetch(sql, *args)
            return rows

    async def report_calls(self, query: ReportQuery) -> list[CallGroup]:
        sums_sql, callers_sql, args = _report_sql(query)
        # on two connections at once: the server runs them side by side
        sums, callers = await asyncio.gather(self._report_fetch(sums_sql, args),
                                             self._report_fetch(callers_sql, args))
        n = len(query.group_by)
        unique = {tuple(r[:n]): int(r[n]) for r in callers}
        out = []
        for r in sums:
            key = tuple(r[:n])
            c = list(map(int, r[n:]))
            if c[0]:  # no group (and no row): count(*) of an empty set
                out.append(CallGroup(key, c[0], c[1], c[2], c[3], c[4], unique.get(key, 0),
                                     c[5], c[6], c[7], c[8], c[9]))
        return out

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        await self._flush_behind()  # counters are written behind: count the newest too
        sql, args = _visits_sql(query)
        rows = await self._fetch(sql, *args)
        n = len(query.group_by)
        return [VisitGroup(tuple(r[:n]), int(r[n]), int(r[n + 1])) for r in rows if r[n + 2]]

    async def put_spend(self, rows: Sequence[SpendRow]) -> None:
        async with self._conn() as c, c.transaction():
            await c.executemany(
                "INSERT INTO spend VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (tracker, day, source, medium, campaign) DO UPDATE SET"
                " amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency",
                [(r.tracker, r.day, _t(r.source), _t(r.medium), _t(r.campaign),
                  r.amount_cents, r.currency) for r in rows])

    async def list_spend(
        self, tracker: str | None = None, since_day: str | None = None,
        until_day: str | None = None,
    ) -> list[SpendRow]:
        a = _Args()
        conds = [f"{c} {a(v)}" for c, v in (("tracker =", tracker), ("day >=", since_day),
                                             ("day <", until_day)) if v is not None]
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self._fetch(
            f"SELECT * FROM spend{where} ORDER BY tracker, day, source, medium, campaign",
            *a.values)
        return [SpendRow(*r) for r in rows]

    async def purge_calls(self, before: float) -> int:
        """In batches of 5,000 calls, each its own transaction."""
        total = 0
        while True:
            async with self._conn() as c, c.transaction():
                ids = [r[0] for r in await c.fetch(
                    "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE started_ts < $1"
                    " LIMIT 5000) RETURNING id", before)]
                facts = [r[0] for r in await c.fetch(
                    "DELETE FROM report_calls WHERE id IN (SELECT id FROM report_calls"
                    " WHERE ts < $1 LIMIT 5000) RETURNING id", before)]
                await c.execute("DELETE FROM call_tags WHERE id = ANY($1::text[])", facts)
                await c.execute("DELETE FROM report_visits WHERE hour < $1",
                                int(before // 3600))
            n = max(len(ids), len(facts))
            total += n
            if n == 0:
                return total


def postgres_store(url: str, retention: float | None = None) -> PostgresStore:
    """The store of a `[store] url` that starts with postgresql:// or postgres://."""
    return PostgresStore.from_url(url, retention)

