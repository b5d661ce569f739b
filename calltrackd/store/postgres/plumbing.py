"""The PostgreSQL store's plumbing: the connection pool, the schema, opening and closing
(with the node lock), the write-behind's transaction (the write-behind itself is
`WriteBehind`'s, calltrackd/store/writebehind.py), and the SQL helpers every part uses.

The other parts (reservations.py, records.py, reports.py, outbox.py) are mixins over this
class; the store itself (`PostgresStore`, calltrackd/store/postgres/__init__.py) is all of
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields
from typing import Any, Self

import asyncpg

from calltrackd.store.base import StoreError
from calltrackd.store.codec import encode_session, session_stats_source
from calltrackd.store.memory import Changes
from calltrackd.store.writebehind import VisitCounts, WriteBehind
from calltrackd.tracking.model import NumberState, UsageBucket
from calltrackd.tracking.reports import CallFact

SCHEMES = ("postgresql://", "postgres://")
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
CREATE TABLE IF NOT EXISTS rotations (key text PRIMARY KEY, n bigint NOT NULL);
"""

_CALL_COLS = ("id", "tracker", "node", "started_ts", "outcome", "kind", "channel",
              "utm_source", "utm_medium", "qualified", "first_time", "att_pool",
              "confidence", "data")
_FACT_COLS = ("id", "tracker", "ts", "day", "hour", "did", "caller", "channel", "source",
              "medium", "campaign", "term", "content", "landing_page", "referrer_domain",
              "static_channel", "first_time", "outcome", "qualified", "ring_ms", "talk_ms")
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


_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class PostgresPlumbing(WriteBehind):
    """The pool, schema, node lock and write-behind: what every part of the store uses."""

    def __init__(self, dsn: str, *, flush_interval: float = 0.2,
                 retention: float | None = None, pool_size: int = 8) -> None:
        if not dsn.startswith(SCHEMES):
            raise ValueError(f"store.url: not a postgresql URL: {dsn!r}")
        super().__init__(flush_interval=flush_interval, retention=retention, name="pg")
        self.dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._lock_conn: asyncpg.Connection | None = None

    @classmethod
    def from_url(cls, url: str, retention: float | None = None) -> Self:
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

    def _is_open(self) -> bool:
        return self._pool is not None

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
        self._start_behind()

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
        try:
            await self._stop_behind()
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

    # --- the write-behind's transaction -------------------------------------------------

    async def _write_behind(self, ch: Changes, visits: VisitCounts, prune: float | None
                            ) -> None:
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
