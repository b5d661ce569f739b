"""The SQLite store's plumbing: the connections and their threads, the schema, opening
and closing, the write-behind's transaction (the write-behind itself is `WriteBehind`'s,
calltrackd/store/writebehind.py), and the report reader.

The other parts (reservations.py, records.py, outbox.py) are mixins over this class; the
store itself (`SqliteStore`, calltrackd/store/sqlite/__init__.py) is all of them.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs

from calltrackd.store.base import StoreError, backfill_loop, stop_task
from calltrackd.store.codec import (
    decode_call,
    decode_text,
    encode_session,
    session_stats_source,
)
from calltrackd.store.memory import Changes
from calltrackd.store.writebehind import VisitCounts, WriteBehind
from calltrackd.tracking.model import NumberState, UsageBucket
from calltrackd.tracking.reports import CallFact, call_fact

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
CREATE TABLE IF NOT EXISTS rotations (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
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


def _fact_row(f: CallFact) -> tuple[Any, ...]:
    return (f.tracker, f.ts, f.id, f.day, f.hour, f.did, f.caller, f.channel, f.source,
            f.medium, f.campaign, f.term, f.content, f.landing_page, f.referrer_domain,
            f.static_channel, None if f.first_time is None else int(f.first_time),
            f.outcome, None if f.qualified is None else int(f.qualified), f.ring_ms,
            f.talk_ms)


# --- outbox schema changes ---------------------------------------------------------------
# Checked by the columns present rather than by `schema_version`, so that this block does
# not depend on the order in which other changes to the schema land.


def _migrate_outbox(conn: sqlite3.Connection) -> None:
    """Databases made before outbox rows had a kind: every old row is a webhook."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    if "kind" not in cols:
        conn.execute("ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook'")


class SqlitePlumbing(WriteBehind):
    """Connections, threads, schema, the write-behind's transaction: what every part of
    the store uses."""

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
        super().__init__(flush_interval=flush_interval, retention=retention, name="sqlite")
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # reports: a reader of their own (a long scan must not delay caller lookups)
        self._backfill_task: asyncio.Task[None] | None = None
        self._report_reader: ThreadPoolExecutor | None = None
        self._report_conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str, retention: float | None = None) -> Self:
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
        self._start_behind()
        self._backfill_task = asyncio.create_task(backfill_loop(self._backfill_batches),
                                                  name="sqlite-backfill")

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
        await stop_task(self._backfill_task)
        self._backfill_task = None
        await self._close_report_reader()
        try:
            await self._stop_behind()
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

    def _is_open(self) -> bool:
        return self._open

    # --- the write-behind's transaction -------------------------------------------------

    async def _write_behind(self, ch: Changes, visits: VisitCounts, prune: float | None
                            ) -> None:
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
                if prune is not None:
                    conn.execute("DELETE FROM visitors WHERE expires < ?", (prune,))
                _execute_rows(
                    conn,
                    "UPDATE sessions SET last_seen = max(sessions.last_seen, t.column2),"
                    " dynamic = max(sessions.dynamic, t.column3)"
                    " FROM (VALUES {values}) AS t WHERE sessions.id = t.column1", 3,
                    [(sid, seen, int(d)) for sid, (seen, d) in ch.touches.items()],
                )
                _write_visit_counts(conn, visits)

            self._tx(conn, body)

        await self._write(write)


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

    async def _backfill_batches(self) -> None:
        """Report facts for the calls recorded before this store kept them (`backfill_loop`):
        in batches of 2,000, the progress kept in report_meta."""
        while await self._write(_backfill_batch):
            pass


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

    SqlitePlumbing._tx(conn, body)
    return len(rows)


def _write_visit_counts(conn: sqlite3.Connection, visits: VisitCounts) -> None:
    _execute_rows(
        conn,
        "INSERT INTO report_visits VALUES {values} ON CONFLICT DO UPDATE SET"
        " visitors = visitors + excluded.visitors, dynamic = dynamic + excluded.dynamic", 12,
        [(tracker, *cell, n, d) for (tracker, cell), (n, d) in visits.items()])
