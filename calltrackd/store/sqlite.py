"""The embedded store: one node, stdlib sqlite3 in WAL mode, off the event loop.

- Reservations live in memory (`tracking.allocator.Allocator`): allocation runs on the
  loop with no await between check and take, so it is atomic within the one asyncio
  process. Number states, hourly pool usage and visitor sessions are written behind,
  batched every `flush_interval` (a kill loses at most that much reservation activity).
- CDRs and outbox rows are written through: `save_call` returns once its transaction
  committed. Concurrent `save_call`s are group-committed in one transaction.
- One writer thread and one reader thread (own connection: WAL readers never wait for
  the writer). `synchronous=NORMAL` (the default here): a commit is in the WAL file
  before `save_call` returns, so it survives a process kill; a power loss may lose the
  last commits. `sqlite:///path?synchronous=full` trades speed for that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import operator
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import structlog

from calltrackd.store.base import (
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
    decode_text,
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
from calltrackd.store.memory import MemoryState
from calltrackd.tracking.allocator import NumberState, UsageBucket
from calltrackd.tracking.attribution import is_anonymous
from calltrackd.tracking.model import (
    CallRecord,
    Hold,
    LastVisit,
    Tracker,
    VisitorSession,
    WebhookDelivery,
)
from calltrackd.tracking.reports import (
    CallFact,
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitCell,
    VisitGroup,
    aggregate_visits,
    call_fact,
    cents,
    visit_cell,
)

log = structlog.get_logger(__name__)

CDR_BATCH_WINDOW = 0.02  # seconds a call record may wait for others to share its write
_CHUNKS = (64, 16, 4, 1)  # rows per statement: few distinct statements to prepare


@functools.lru_cache(maxsize=256)
def _values_sql(template: str, ncols: int, rows: int) -> str:
    one = "(" + ",".join("?" * ncols) + ")"
    return template.format(values=",".join([one] * rows))


def _execute_rows(conn: sqlite3.Connection, template: str, ncols: int,
                  rows: Sequence[Sequence[Any]]) -> None:
    """executemany, with up to 64 rows in one statement (`{values}` in the template).

    sqlite3 lets go of the GIL around every statement step; the writer thread then needs
    it back, and the event loop hands it over (and waits to get it back) at its next
    callback. Row by row, that was thousands of hand-overs a second at full load."""
    i, n = 0, len(rows)
    for size in _CHUNKS:
        while n - i >= size:
            conn.execute(_values_sql(template, ncols, size),
                         [v for row in rows[i:i + size] for v in row])
            i += size


# rows from the allocator's dataclasses (dataclasses.astuple deep-copies: 10x slower)
_number_row = operator.attrgetter(*(f.name for f in fields(NumberState)))
_usage_row = operator.attrgetter(*(f.name for f in fields(UsageBucket)))
T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY, tracker TEXT NOT NULL, utm_source TEXT, utm_medium TEXT,
  first_seen REAL NOT NULL, last_seen REAL NOT NULL, dynamic INTEGER NOT NULL,
  data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_first_seen ON sessions (first_seen);
CREATE TABLE IF NOT EXISTS visitors (
  tracker TEXT NOT NULL, key TEXT NOT NULL, session_id TEXT NOT NULL, number TEXT,
  at REAL NOT NULL, expires REAL NOT NULL, PRIMARY KEY (tracker, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbers (
  number TEXT PRIMARY KEY, tracker TEXT NOT NULL, pool TEXT NOT NULL,
  holder TEXT, held_since REAL, expires_at REAL,
  last_holder TEXT, last_held_since REAL, released_at REAL);
CREATE TABLE IF NOT EXISTS pool_usage (
  tracker TEXT NOT NULL, pool TEXT NOT NULL, hour INTEGER NOT NULL,
  peak INTEGER NOT NULL, shortfall INTEGER NOT NULL, PRIMARY KEY (tracker, pool, hour));
CREATE TABLE IF NOT EXISTS callers (
  tracker TEXT NOT NULL, caller TEXT NOT NULL, first_call_at REAL NOT NULL,
  PRIMARY KEY (tracker, caller)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls (
  id TEXT PRIMARY KEY, tracker TEXT NOT NULL, started_ts REAL NOT NULL, outcome TEXT,
  kind TEXT, channel TEXT, utm_source TEXT, utm_medium TEXT,
  qualified INTEGER, first_time INTEGER, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS calls_by_start ON calls (started_ts, id);
CREATE INDEX IF NOT EXISTS calls_by_tracker ON calls (tracker, started_ts, id);
CREATE TABLE IF NOT EXISTS deliveries (
  id TEXT PRIMARY KEY, event_id TEXT NOT NULL, event TEXT NOT NULL, tracker TEXT NOT NULL,
  url TEXT NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL,
  attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, status TEXT NOT NULL,
  last_error TEXT, delivered_at REAL, kind TEXT NOT NULL DEFAULT 'webhook');
CREATE INDEX IF NOT EXISTS deliveries_pending_due ON deliveries (next_attempt_at, created_at)
  WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, created_at);
CREATE TABLE IF NOT EXISTS heartbeat (node TEXT PRIMARY KEY, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS calls_open ON calls (started_ts) WHERE outcome IS NULL;
"""
# --- reports: call facts, CRM updates, visit counters, spend (tracking/reports.py) ------
# report_calls is clustered by (tracker, ts) so that a report over a period reads one
# contiguous range; crm and value_cents are written by update_call only (a call's later
# steps upsert the other columns). Visit counters are kept per tracker, hour and source.
_REPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS report_calls (
  tracker TEXT NOT NULL, ts REAL NOT NULL, id TEXT NOT NULL, day INTEGER NOT NULL,
  hour INTEGER NOT NULL, did TEXT, caller TEXT, channel TEXT, source TEXT, medium TEXT,
  campaign TEXT, term TEXT, content TEXT, landing_page TEXT, referrer_domain TEXT,
  static_channel TEXT, first_time INTEGER, outcome TEXT, qualified INTEGER, ring_ms INTEGER,
  talk_ms INTEGER, value_cents INTEGER, crm TEXT,
  PRIMARY KEY (tracker, ts, id)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS report_calls_id ON report_calls (id);
CREATE INDEX IF NOT EXISTS report_calls_ts ON report_calls (ts);
CREATE TABLE IF NOT EXISTS call_tags (
  id TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (id, tag)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS call_tags_by_tag ON call_tags (tag, id);
CREATE TABLE IF NOT EXISTS report_visits (
  tracker TEXT NOT NULL, hour INTEGER NOT NULL, channel TEXT NOT NULL, source TEXT NOT NULL,
  medium TEXT NOT NULL, campaign TEXT NOT NULL, term TEXT NOT NULL, content TEXT NOT NULL,
  landing_page TEXT NOT NULL, referrer_domain TEXT NOT NULL, visitors INTEGER NOT NULL,
  dynamic INTEGER NOT NULL,
  PRIMARY KEY (tracker, hour, channel, source, medium, campaign, term, content,
               landing_page, referrer_domain)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
  tracker TEXT NOT NULL, day TEXT NOT NULL, source TEXT NOT NULL, medium TEXT NOT NULL,
  campaign TEXT NOT NULL, amount_cents INTEGER NOT NULL, currency TEXT NOT NULL,
  PRIMARY KEY (tracker, day, source, medium, campaign)) WITHOUT ROWID;
"""
_FACT_COLS = ("tracker", "ts", "id", "day", "hour", "did", "caller", "channel", "source",
              "medium", "campaign", "term", "content", "landing_page", "referrer_domain",
              "static_channel", "first_time", "outcome", "qualified", "ring_ms", "talk_ms")
_FACT_UPSERT = (
    f"INSERT INTO report_calls ({', '.join(_FACT_COLS)}) VALUES {{values}}"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _FACT_COLS[3:])
)
_CRM_OF_CALL = "(SELECT crm FROM report_calls r WHERE r.id = calls.id)"
_VISIT_COLS = ("channel", "source", "medium", "campaign", "term", "content", "landing_page",
               "referrer_domain")
_VISIT_SEEN_MAX = 200_000  # sessions whose visit cell this node remembers (dynamic later)


def _fact_row(f: CallFact) -> tuple[Any, ...]:
    return (f.tracker, f.ts, f.id, f.day, f.hour, f.did, f.caller, f.channel, f.source,
            f.medium, f.campaign, f.term, f.content, f.landing_page, f.referrer_domain,
            f.static_channel, None if f.first_time is None else int(f.first_time),
            f.outcome, None if f.qualified is None else int(f.qualified), f.ring_ms,
            f.talk_ms)


def _in(column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def _report_sql(q: ReportQuery) -> tuple[str, list[Any]]:
    """The SELECT of `report_calls` computing `CallGroup`s as `aggregate_calls` does."""
    exprs: list[str] = []
    args: list[Any] = []
    join = ""
    for dim in q.group_by:
        if dim == "weekday":
            exprs.append("(r.day + 3) % 7 + 1")
        elif dim == "tag":
            exprs.append("t.tag")
            join = " LEFT JOIN call_tags t ON t.id = r.id"
        elif dim == "pool":
            if q.pools:
                exprs.append("CASE r.did " + "WHEN ? THEN ? " * len(q.pools) + "END")
                args += [x for kv in q.pools.items() for x in kv]
            else:
                exprs.append("NULL")
        else:
            exprs.append(f"r.{dim}")
    conds: list[str] = []
    wargs: list[Any] = []
    if q.tracker is not None:
        conds.append("r.tracker = ?")
        wargs.append(q.tracker)
    conds.append("r.ts >= ?")
    wargs.append(q.since)
    if q.until != float("inf"):
        conds.append("r.ts < ?")
        wargs.append(q.until)
    for dim, accepted in sorted(q.filters.items()):
        values = sorted(accepted, key=repr)
        if dim == "tag":
            cond, a = _in("tag", values)
            conds.append(f"r.id IN (SELECT id FROM call_tags WHERE {cond})")
            if join:  # grouped by tag too: only the tags asked for
                tcond, ta = _in("t.tag", values)
                conds.append(tcond)
                a = a + ta
        elif dim == "pool":
            cond, a = _in("r.did", sorted(n for n, p in q.pools.items() if p in accepted))
            conds.append(cond)
        elif dim == "first_time":
            cond, a = _in("r.first_time", [int(v) for v in values])
            conds.append(cond)
        elif dim == "weekday":
            cond, a = _in("(r.day + 3) % 7 + 1", values)
            conds.append(cond)
        else:
            cond, a = _in(f"r.{dim}", values)
            conds.append(cond)
        wargs += a
    keys = ", ".join(exprs) + ", " if exprs else ""
    group = " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs))) if exprs else ""
    sql = (
        f"SELECT {keys}count(*), total(r.outcome = 'answered'),"
        " total(r.outcome IS NOT NULL AND r.outcome != 'answered'), total(r.qualified = 1),"
        " total(r.first_time = 1), count(DISTINCT r.caller), total(r.ring_ms),"
        " count(r.ring_ms), total(r.talk_ms), count(r.talk_ms), total(r.value_cents)"
        f" FROM report_calls r{join} WHERE {' AND '.join(conds)}{group}"
    )
    return sql, args + wargs


_DELIVERY_COLS = (
    "id, event_id, event, tracker, url, body, created_at, attempts, next_attempt_at, status,"
    " last_error, kind"
)
_NDELIVERY_COLS = 12


# --- outbox schema changes ---------------------------------------------------------------
# Checked by the columns present rather than by `schema_version`, so that this block does
# not depend on the order in which other changes to the schema land.


def _migrate_outbox(conn: sqlite3.Connection) -> None:
    """Databases made before outbox rows had a kind: every old row is a webhook."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    if "kind" not in cols:
        conn.execute("ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook'")


def _delivery_row(d: WebhookDelivery) -> tuple[Any, ...]:
    return (d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at, d.attempts,
            d.next_attempt_at, d.status, d.last_error, d.kind)
# --- end of outbox schema changes --------------------------------------------------------
_CdrItem = tuple[
    tuple[Any, ...], list[tuple[Any, ...]], tuple[str, str, float] | None, tuple[Any, ...],
    asyncio.Future[None],
]
_MAX_LIMIT = 1000


def _delivery(row: tuple[Any, ...]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row[0], event_id=row[1], event=row[2], tracker=row[3], url=row[4], body=bytes(row[5]),
        created_at=row[6], attempts=row[7], next_attempt_at=row[8], status=row[9],
        last_error=row[10], kind=row[11],
    )


_SEEN_CALLERS_MAX = 100_000  # (tracker, caller) pairs remembered as seen (~15 MB)


class SqliteStore:
    """`Store` over one SQLite file (or `:memory:` for tests)."""

    def __init__(
        self, path: str, *, synchronous: str = "NORMAL", flush_interval: float = 0.2,
        retention: float | None = None,
    ) -> None:
        """`path` is a file, ":memory:", or a `sqlite://` URL (see `from_url`)."""
        if path.startswith("sqlite://"):
            path, synchronous = self._parse_url(path)
        self.path = path
        self._synchronous = synchronous.upper()
        if self._synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"store.url: synchronous={synchronous!r}")
        self._flush_interval = flush_interval
        self._mem = MemoryState()
        self._seen_callers: set[tuple[str, str]] = set()
        self._cdr_queue: list[_CdrItem] = []
        self._cdr_task: asyncio.Task[None] | None = None
        self._behind_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_batch = 0.0  # loop time the last CDR batch was taken
        self._visit_keep = 0.0  # the longest returning_window noted
        self._last_prune = 0.0
        self.node_id = "local"
        # reports: a reader of their own (a long scan must not delay caller lookups),
        # visit counters not yet written, visits remembered for a later dynamic number
        self.retention = retention
        self._retention_task: asyncio.Task[None] | None = None
        self._backfill_task: asyncio.Task[None] | None = None
        self._report_reader: ThreadPoolExecutor | None = None
        self._report_conn: sqlite3.Connection | None = None
        self._visits_pending: dict[tuple[str, VisitCell], list[int]] = {}
        self._visit_seen: OrderedDict[str, tuple[str, VisitCell, bool]] = OrderedDict()

    @classmethod
    def from_url(cls, url: str, retention: float | None = None) -> SqliteStore:
        """Everything after `sqlite://` is the file: `sqlite:///var/lib/x.db` (absolute),
        `sqlite:///./var/x.db` or `sqlite://var/x.db` (relative to the working directory),
        `sqlite://:memory:`; `?synchronous=full` optional."""
        if not url.startswith("sqlite://"):
            raise ValueError(f"store.url: not a sqlite URL: {url!r}")
        return cls(url, retention=retention)

    @staticmethod
    def _parse_url(url: str) -> tuple[str, str]:
        path, _, query = url[len("sqlite://") :].partition("?")
        if path in ("", "/"):
            raise ValueError(f"store.url: no database file in {url!r}")
        if path == "/:memory:":
            path = ":memory:"
        elif path.startswith(("/./", "/../")):
            path = path[1:]  # "sqlite:///./var/x.db": the third slash only separates
        return path, parse_qs(query).get("synchronous", ["NORMAL"])[0]

    # --- plumbing ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.text_factory = decode_text  # stored bytes that are not UTF-8 never fail a read
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open or self._writer is None or self._wconn is None:
            raise StoreError("store is closed")
        conn = self._wconn
        assert self._loop is not None
        return await self._loop.run_in_executor(self._writer, fn, conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._open or self._reader is None or self._rconn is None:
            raise StoreError("store is closed")
        conn = self._rconn
        assert self._loop is not None
        return await self._loop.run_in_executor(self._reader, fn, conn)

    @staticmethod
    def _tx(conn: sqlite3.Connection, body: Callable[[], None]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            body()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def open(self) -> None:
        memory = self.path == ":memory:"
        if not memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        loop = self._loop = asyncio.get_running_loop()  # kept: save_call runs per call step
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = self._writer if memory else ThreadPoolExecutor(1, "sqlite-reader")
        try:
            self._wconn = await loop.run_in_executor(self._writer, self._connect)
            self._open = True
            self._mem.load(*await self._write(self._init_schema))
            self._rconn = (
                self._wconn if memory else await loop.run_in_executor(self._reader, self._connect)
            )
        except BaseException:
            await self.close()
            raise
        self._behind_task = asyncio.create_task(self._behind_loop(), name="sqlite-behind")
        self._backfill_task = asyncio.create_task(self._backfill_facts(), name="sqlite-backfill")
        if self.retention:
            self._retention_task = asyncio.create_task(
                retention_loop(self, self.retention), name="sqlite-retention")

    def _init_schema(self, conn: sqlite3.Connection) -> tuple[list[NumberState], list[UsageBucket]]:
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.executescript(_SCHEMA)
        _migrate_outbox(conn)
        conn.executescript(_REPORT_SCHEMA)
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        if row[0] is None:
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {row[0]} is newer than this build")
        states = [NumberState(*r) for r in conn.execute("SELECT * FROM numbers")]
        usage = [UsageBucket(*r) for r in conn.execute("SELECT * FROM pool_usage")]
        return states, usage

    async def close(self) -> None:
        """Flush what is written behind and close; a no-op when not open."""
        await stop_task(self._retention_task)
        await stop_task(self._backfill_task)
        self._retention_task = self._backfill_task = None
        await self._close_report_reader()
        if self._behind_task is not None:
            self._behind_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._behind_task
            self._behind_task = None
        if self._cdr_task is not None:
            with contextlib.suppress(Exception):
                await self._cdr_task
        try:
            if self._open and self._wconn is not None:
                await self._flush_behind()
        finally:
            self._open = False
            loop = asyncio.get_running_loop()
            if self._rconn is not self._wconn and self._rconn and self._reader:
                await loop.run_in_executor(self._reader, self._rconn.close)
            if self._wconn and self._writer:
                await loop.run_in_executor(self._writer, self._wconn.close)
            for pool in {self._reader, self._writer}:
                if pool is not None:
                    pool.shutdown()
            self._wconn = self._rconn = None
            self._writer = self._reader = None

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # --- write-behind: numbers, pool usage, sessions ---------------------------------

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
        ch = self._mem.take_changes()
        visits, self._visits_pending = self._visits_pending, {}
        if not ch and not visits:
            return
        prune_visits = None
        if ch.visits and self._last_prune + 3600 < (now := time.time()):
            self._last_prune, prune_visits = now, now  # visitors past returning_window

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                _execute_rows(conn, "INSERT OR REPLACE INTO numbers VALUES {values}", 9,
                              [_number_row(s) for s in ch.numbers])
                _execute_rows(conn, "DELETE FROM numbers WHERE number IN (VALUES {values})", 1,
                              [(n,) for n in ch.gone_numbers])
                _execute_rows(conn, "INSERT OR REPLACE INTO pool_usage VALUES {values}", 5,
                              [_usage_row(b) for b in ch.usage])
                _execute_rows(
                    conn,
                    "INSERT INTO sessions VALUES {values} ON CONFLICT (id) DO UPDATE"
                    " SET last_seen = max(last_seen, excluded.last_seen),"
                    " dynamic = max(dynamic, excluded.dynamic)", 8,
                    [(s.id, s.tracker, *session_stats_source(s),
                      s.first_seen, s.last_seen, int(d), encode_session(s))
                     for s, d in ch.sessions.values()],
                )
                _execute_rows(
                    conn,
                    "UPDATE sessions SET data = t.column2 FROM (VALUES {values}) AS t"
                    " WHERE sessions.id = t.column1", 2,
                    [(sid, encode_session(s)) for sid, s in ch.updates.items()],
                )
                _execute_rows(conn, "INSERT OR REPLACE INTO visitors VALUES {values}", 6,
                              [(t, k, v.session_id, v.number, v.at, v.at + self._visit_keep)
                               for (t, k), v in ch.visits.items()])
                if prune_visits is not None:
                    conn.execute("DELETE FROM visitors WHERE expires < ?", (prune_visits,))
                _execute_rows(
                    conn,
                    "UPDATE sessions SET last_seen = max(sessions.last_seen, t.column2),"
                    " dynamic = max(sessions.dynamic, t.column3)"
                    " FROM (VALUES {values}) AS t WHERE sessions.id = t.column1", 3,
                    [(sid, seen, int(d)) for sid, (seen, d) in ch.touches.items()],
                )
                _write_visit_counts(conn, visits)

            self._tx(conn, body)

        try:
            await self._write(write)
        except BaseException:
            self._mem.put_back(ch)
            self._put_back_visits(visits)
            raise

    # --- sessions --------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("store is closed")

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

    async def update_session(self, session: VisitorSession) -> None:
        self._check_open()
        self._mem.update_session(session)
        self._kick()

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

    async def reserve_number(
        self, tracker: str, pool: str, number: str, session_id: str, now: float, ttl: float,
        previous: str | None = None,
    ) -> Hold | None:
        self._check_open()
        hold = self._mem.reserve_number(tracker, pool, number, session_id, now, ttl, previous)
        self._kick()
        return hold

    # --- end of visits ---------------------------------------------------------------

    # --- reservations (in memory, persisted behind) ----------------------------------

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

    # --- call records: written through, group-committed ------------------------------

    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        self._check_open()
        record = storable_call(record)  # without a field no store can write, never refused
        att = record.attribution
        session = att.session if att else None
        row = (
            record.id, record.tracker, timestamp(record.started_at), record.outcome,
            att.kind if att else None, att.channel if att else None,
            *(session_stats_source(session) if session else (None, None)),
            None if record.qualified is None else int(record.qualified),
            None if record.first_time_caller is None else int(record.first_time_caller),
            encode_call(record),
        )
        drows = [_delivery_row(d) for d in deliveries]
        caller = None if is_anonymous(record.caller) else (record.tracker, record.caller, row[2])
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._cdr_queue.append((row, drows, caller, _fact_row(call_fact(record)), done))
        if self._cdr_task is None or self._cdr_task.done():
            self._cdr_task = asyncio.create_task(self._drain_calls(), name="sqlite-cdrs")
        # no shield needed: a cancelled waiter cancels `done`, which the batch skips,
        # and the row is written all the same
        await done

    async def _drain_calls(self) -> None:
        while self._cdr_queue:
            # at most one batch per window: under load the records of the window share a
            # write (a batch of one costs the writer thread and the loop as many
            # hand-overs as a batch of sixty; 3,000 records/s came in ~1,000 batches);
            # a lone record after a quiet spell is written at once
            assert self._loop is not None
            wait = self._last_batch + CDR_BATCH_WINDOW - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_batch = self._loop.time()
            batch, self._cdr_queue = self._cdr_queue, []
            try:
                errors = await self._write(functools.partial(self._write_calls, batch))
            except Exception as exc:
                errors = [exc] * len(batch)
            for (*_, done), error in zip(batch, errors, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    @staticmethod
    def _write_calls(batch: list[_CdrItem], conn: sqlite3.Connection) -> list[Exception | None]:
        """One transaction for the batch. First all rows at once; if the database refuses
        one, again with a savepoint per save_call, so that the refused row fails its own
        save_call only."""
        def fast() -> None:
            _execute_rows(conn, "INSERT OR REPLACE INTO calls VALUES {values}", 11,
                          [item[0] for item in batch])
            _execute_rows(conn, f"INSERT INTO deliveries ({_DELIVERY_COLS}) VALUES {{values}}"
                          " ON CONFLICT (id) DO NOTHING", _NDELIVERY_COLS,
                          [d for item in batch for d in item[1]])
            _execute_rows(conn, "INSERT OR IGNORE INTO callers VALUES {values}", 3,
                          [item[2] for item in batch if item[2] is not None])
            _execute_rows(conn, _FACT_UPSERT, len(_FACT_COLS), [item[3] for item in batch])

        try:
            SqliteStore._tx(conn, fast)
            return [None] * len(batch)
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                sqlite3.DataError, ValueError):
            pass  # rolled back: find the culprit row by row
        errors: list[Exception | None] = []

        def body() -> None:
            for row, drows, caller, fact, _ in batch:
                conn.execute("SAVEPOINT save_call")
                try:
                    conn.execute("INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
                    conn.executemany(
                        f"INSERT INTO deliveries ({_DELIVERY_COLS})"
                        f" VALUES ({','.join('?' * _NDELIVERY_COLS)})"
                        " ON CONFLICT (id) DO NOTHING",
                        drows,
                    )
                    if caller is not None:
                        conn.execute("INSERT OR IGNORE INTO callers VALUES (?,?,?)", caller)
                    _execute_rows(conn, _FACT_UPSERT, len(_FACT_COLS), [fact])
                except (sqlite3.IntegrityError, sqlite3.InterfaceError,
                        sqlite3.ProgrammingError, sqlite3.DataError, ValueError) as exc:
                    conn.execute("ROLLBACK TO save_call")
                    errors.append(exc)
                else:
                    errors.append(None)
                conn.execute("RELEASE save_call")

        SqliteStore._tx(conn, body)
        return errors

    async def get_call(self, call_id: str) -> CallRecord | None:
        sql = f"SELECT data, {_CRM_OF_CALL} FROM calls WHERE id = ?"
        row = await self._read(lambda c: c.execute(sql, (call_id,)).fetchone())
        return with_crm(decode_call(row[0]), row[1]) if row else None

    async def list_calls(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        after = None
        if cursor is not None:
            ts, call_id = decode_cursor(cursor)
            after = (ts, ts, call_id)
        where, args = self._where(tracker, since, until, extra=[
            ("outcome = ?", outcome),
            ("(started_ts < ? OR (started_ts = ? AND id < ?))", after),
        ])
        limit = max(1, min(limit, _MAX_LIMIT))
        sql = (f"SELECT started_ts, id, data, {_CRM_OF_CALL} FROM calls{where}"
               " ORDER BY 1 DESC, 2 DESC LIMIT ?")
        rows = await self._read(lambda c: c.execute(sql, (*args, limit + 1)).fetchall())
        page = rows[:limit]
        more = len(rows) > limit
        return [with_crm(decode_call(r[2]), r[3]) for r in page], (
            encode_cursor(page[-1][0], page[-1][1]) if more else None
        )

    @staticmethod
    def _where(
        tracker: str | None,
        since: datetime | None,
        until: datetime | None,
        col: str = "started_ts",
        extra: Sequence[tuple[str, Any]] = (),
    ) -> tuple[str, list[Any]]:
        """A WHERE clause (or "") over the tracker and a [since, until) window of `col`."""
        conds = [
            ("tracker = ?", tracker),
            (f"{col} >= ?", timestamp(since) if since else None),
            (f"{col} < ?", timestamp(until) if until else None),
            *extra,
        ]
        used = [(c, v) for c, v in conds if v is not None]
        clause = " WHERE " + " AND ".join(c for c, _ in used) if used else ""
        return clause, [a for _, v in used for a in (v if isinstance(v, tuple) else (v,))]

    # --- webhook outbox --------------------------------------------------------------

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        return await self._write(lambda c: c.execute(sql, args).rowcount)

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        excluded = tuple(exclude_urls)
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM deliveries INDEXED BY deliveries_pending_due"
            " WHERE status = 'pending' AND next_attempt_at <= ?"
            + (f" AND url NOT IN ({','.join('?' * len(excluded))})" if excluded else "")
            + " ORDER BY next_attempt_at, created_at LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (now, *excluded, limit)).fetchall())
        return [_delivery(r) for r in rows]

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
            " delivered_at = ?, last_error = NULL WHERE id = ?",
            (now, delivery_id),
        )

    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        """`mark_delivered` for the rows one request carried, in one transaction."""
        rows = [(now, i) for i in delivery_ids]

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                conn.executemany(
                    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,"
                    " delivered_at = ?, last_error = NULL WHERE id = ?", rows)

            self._tx(conn, body)

        await self._write(write)

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'pending', attempts = ?, next_attempt_at = ?,"
            " last_error = ? WHERE id = ? AND status != 'delivered'",
            (attempts, next_attempt_at, error, delivery_id),
        )

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        await self._execute(
            "UPDATE deliveries SET status = 'failed', attempts = ?, last_error = ?"
            " WHERE id = ? AND status != 'delivered'",
            (attempts, error, delivery_id),
        )

    async def list_deliveries(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[WebhookDelivery]:
        conds = [(c, v) for c, v in (("status = ?", status), ("kind = ?", kind)) if v]
        where = ("WHERE " + " AND ".join(c for c, _ in conds)) if conds else ""
        args = tuple(v for _, v in conds)
        sql = f"SELECT {_DELIVERY_COLS} FROM deliveries {where} ORDER BY created_at DESC, id DESC"
        limit = max(1, min(limit, _MAX_LIMIT))
        rows = await self._read(lambda c: c.execute(sql + " LIMIT ?", (*args, limit)).fetchall())
        return [_delivery(r) for r in rows]

    async def requeue(self, delivery_id: str, now: float) -> bool:
        changed = await self._execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
            " WHERE id = ? AND status != 'delivered'",
            (now, delivery_id),
        )
        return changed > 0

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        return None  # due rows are not leased here: each poll sees them again

    async def pending_count(self) -> int:
        sql = "SELECT count(*) FROM deliveries WHERE status = 'pending'"
        n: int = (await self._read(lambda c: c.execute(sql).fetchone()))[0]
        return n

    # --- node liveness and crash recovery (one file is one node's: node_id is a label) ---

    async def heartbeat(self, now: float) -> None:
        sql = "INSERT OR REPLACE INTO heartbeat VALUES (?, ?)"
        await self._write(lambda c: c.execute(sql, (self.node_id, now)) and None)

    async def last_heartbeat(self) -> float | None:
        sql = "SELECT max(ts) FROM heartbeat"
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return float(row[0]) if row and row[0] is not None else None

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        sql = ("SELECT data FROM calls INDEXED BY calls_open WHERE outcome IS NULL"
               " AND started_ts < ? ORDER BY started_ts")
        rows = await self._read(lambda c: c.execute(sql, (started_before,)).fetchall())
        return [decode_call(r[0]) for r in rows]

    # --- statistics ------------------------------------------------------------------

    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]:
        where, args = self._where(tracker, since, until)
        sql = (
            "SELECT tracker, coalesce(kind, 'none'), channel, utm_source, utm_medium, count(*),"
            " total(outcome = 'answered'), total(outcome IS NOT NULL AND outcome != 'answered'),"
            f" total(qualified = 1), total(first_time = 1) FROM calls{where}"
            " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 6 DESC"
        )
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [CallStats(*r[:6], *map(int, r[6:])) for r in rows]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        try:
            await self._flush_behind()  # sessions are written behind: count the newest too
        except Exception as exc:  # the store's trouble: count what is written
            log.warning("store.write_behind_failed", error=repr(exc))
        where, args = self._where(tracker, since, until, col="first_seen")
        sql = (
            f"SELECT tracker, utm_source, utm_medium, count(*), total(dynamic) FROM sessions{where}"
            " GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC"
        )
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [VisitorStats(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]

    # --- holder history, visits, confidences ------------------------------------------
    # The history is the memory state's (it is rebuilt as numbers are handed out after
    # a restart); visits and confidences are read from the sessions and calls tables.

    async def hold_history(self, number: str, now: float) -> list[Hold]:
        self._check_open()
        return self._mem.history.of(number, now)

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        await self._flush_behind()
        sql = ("SELECT first_seen, last_seen, utm_source, utm_medium FROM sessions"
               " WHERE first_seen >= ? AND first_seen < ? AND tracker = ? ORDER BY first_seen")
        rows = await self._read(lambda c: c.execute(sql, (since, until, tracker)).fetchall())
        return [Visit(tracker, r[0], r[1], r[2], r[3]) for r in rows]

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        where, args = self._where(tracker, since, until)
        sql = (
            "SELECT tracker, json_extract(data, '$.attribution.pool'), coalesce(kind, 'none'),"
            " count(*), count(json_extract(data, '$.attribution.confidence')),"
            f" total(json_extract(data, '$.attribution.confidence')) FROM calls{where}"
            " GROUP BY 1, 2, 3"
        )
        rows = await self._read(lambda c: c.execute(sql, args).fetchall())
        return [AttributionStats(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    # --- end of holder history ----------------------------------------------------------
    # --- reports, spend, CRM updates, retention --------------------------------------

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

    def _put_back_visits(self, visits: dict[tuple[str, VisitCell], list[int]]) -> None:
        for key, (n, d) in visits.items():
            counts = self._visits_pending.setdefault(key, [0, 0])
            counts[0] += n
            counts[1] += d

    async def _report(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a report query on the reports' own reader (opened at first use)."""
        if not self._open:
            raise StoreError("store is closed")
        if self.path == ":memory:":
            return await self._read(fn)
        assert self._loop is not None
        if self._report_reader is None:
            self._report_reader = ThreadPoolExecutor(1, "sqlite-reports")
            self._report_conn = await self._loop.run_in_executor(
                self._report_reader, self._connect)
        conn = self._report_conn
        assert conn is not None
        return await self._loop.run_in_executor(self._report_reader, fn, conn)

    async def _close_report_reader(self) -> None:
        if self._report_reader is not None and self._report_conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._report_reader, self._report_conn.close)
            self._report_reader.shutdown()
        self._report_reader = None
        self._report_conn = None

    async def _backfill_facts(self) -> None:
        """Report facts for the calls recorded before this store kept them (once, in
        batches of 2,000 in the background; the progress survives restarts)."""
        while True:
            try:
                while await self._write(_backfill_batch):
                    pass
                return
            except Exception as exc:  # the disk full, say: again in a while
                log.warning("store.report_backfill_failed", error=repr(exc))
                await asyncio.sleep(30.0)

    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        crm = crm_json(record)
        value = cents(record.value)
        drows = [_delivery_row(d) for d in deliveries]

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                cur = conn.execute(
                    "UPDATE report_calls SET crm = ?, value_cents = ? WHERE id = ?",
                    (crm, value, record.id))
                if cur.rowcount == 0:  # a call recorded before reports existed
                    _execute_rows(conn, _FACT_UPSERT, len(_FACT_COLS),
                                  [_fact_row(call_fact(record))])
                    conn.execute("UPDATE report_calls SET crm = ?, value_cents = ? WHERE id = ?",
                                 (crm, value, record.id))
                conn.execute("DELETE FROM call_tags WHERE id = ?", (record.id,))
                conn.executemany("INSERT OR IGNORE INTO call_tags VALUES (?, ?)",
                                 [(record.id, t) for t in record.tags])
                conn.executemany(
                    f"INSERT INTO deliveries ({_DELIVERY_COLS})"
                    f" VALUES ({','.join('?' * _NDELIVERY_COLS)}) ON CONFLICT (id) DO NOTHING",
                    drows)

            self._tx(conn, body)

        await self._write(write)

    async def report_calls(self, query: ReportQuery) -> list[CallGroup]:
        sql, args = _report_sql(query)
        rows = await self._report(lambda c: c.execute(sql, args).fetchall())
        n = len(query.group_by)
        out = []
        for r in rows:
            if not r[n]:  # no group (and no row): count(*) of an empty set
                continue
            key = tuple(bool(v) if d == "first_time" and v is not None else v
                        for d, v in zip(query.group_by, r[:n], strict=True))
            out.append(CallGroup(key, *map(int, r[n:])))
        return out

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        await self._flush_behind()  # counters are written behind: count the newest too
        conds: list[str] = ["hour >= ?"]
        args: list[Any] = [int(query.since // 3600)]
        if query.until != float("inf"):
            conds.append("hour < ?")
            args.append(math.ceil(query.until / 3600))
        if query.tracker is not None:
            conds.append("tracker = ?")
            args.append(query.tracker)
        sql = (f"SELECT hour, {', '.join(_VISIT_COLS)}, visitors, dynamic FROM report_visits"
               f" WHERE {' AND '.join(conds)}")
        rows = await self._report(lambda c: c.execute(sql, args).fetchall())
        return aggregate_visits(((r[:9], r[9], r[10]) for r in rows), query)

    async def put_spend(self, rows: Sequence[SpendRow]) -> None:
        values = [(r.tracker, r.day, r.source, r.medium, r.campaign, r.amount_cents,
                   r.currency) for r in rows]

        def write(conn: sqlite3.Connection) -> None:
            def body() -> None:
                conn.executemany("INSERT OR REPLACE INTO spend VALUES (?,?,?,?,?,?,?)", values)

            self._tx(conn, body)

        await self._write(write)

    async def list_spend(
        self, tracker: str | None = None, since_day: str | None = None,
        until_day: str | None = None,
    ) -> list[SpendRow]:
        conds = [("tracker = ?", tracker), ("day >= ?", since_day), ("day < ?", until_day)]
        used = [(c, v) for c, v in conds if v is not None]
        where = " WHERE " + " AND ".join(c for c, _ in used) if used else ""
        sql = f"SELECT * FROM spend{where} ORDER BY tracker, day, source, medium, campaign"
        rows = await self._report(lambda c: c.execute(sql, [v for _, v in used]).fetchall())
        return [SpendRow(*r) for r in rows]

    async def purge_calls(self, before: float) -> int:
        """In batches of 5,000 calls, each its own transaction (the writer stays free)."""
        hour = int(before // 3600)

        def batch(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM calls WHERE started_ts < ? LIMIT 5000", (before,))]
            facts = [r[0] for r in conn.execute(
                "SELECT id FROM report_calls INDEXED BY report_calls_ts WHERE ts < ?"
                " LIMIT 5000", (before,))]

            def body() -> None:
                _execute_rows(conn, "DELETE FROM calls WHERE id IN (VALUES {values})", 1,
                              [(i,) for i in ids])
                _execute_rows(conn, "DELETE FROM report_calls WHERE id IN (VALUES {values})",
                              1, [(i,) for i in facts])
                _execute_rows(conn, "DELETE FROM call_tags WHERE id IN (VALUES {values})", 1,
                              [(i,) for i in facts])
                conn.execute("DELETE FROM report_visits WHERE hour < ?", (hour,))

            self._tx(conn, body)
            return max(len(ids), len(facts))

        total = 0
        while n := await self._write(batch):
            total += n
        return total


def _backfill_batch(conn: sqlite3.Connection) -> int:
    """One batch of `_backfill_facts`: the number of calls done (0: finished)."""
    row = conn.execute("SELECT value FROM report_meta WHERE key = 'backfill_rowid'").fetchone()
    if row is not None and row[0] < 0:
        return 0
    after = row[0] if row is not None else 0
    rows = conn.execute("SELECT rowid, data FROM calls WHERE rowid > ? ORDER BY rowid LIMIT 2000",
                        (after,)).fetchall()

    def body() -> None:
        _execute_rows(conn, f"INSERT OR IGNORE INTO report_calls ({', '.join(_FACT_COLS)})"
                      " VALUES {values}", len(_FACT_COLS),
                      [_fact_row(call_fact(decode_call(r[1]))) for r in rows])
        conn.execute("INSERT OR REPLACE INTO report_meta VALUES ('backfill_rowid', ?)",
                     (rows[-1][0] if rows else -1,))

    SqliteStore._tx(conn, body)
    return len(rows)


def _write_visit_counts(conn: sqlite3.Connection,
                        visits: dict[tuple[str, VisitCell], list[int]]) -> None:
    _execute_rows(
        conn,
        "INSERT INTO report_visits VALUES {values} ON CONFLICT DO UPDATE SET"
        " visitors = visitors + excluded.visitors, dynamic = dynamic + excluded.dynamic", 12,
        [(tracker, *cell, n, d) for (tracker, cell), (n, d) in visits.items()])
