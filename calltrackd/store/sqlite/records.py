"""The SQLite store's call records: written through and group-committed, read back in
pages, counted for statistics and reports; spend, CRM updates and retention.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from calltrackd.store.base import (
    AttributionStats,
    CallStats,
    Visit,
    VisitorStats,
)
from calltrackd.store.codec import (
    FACT_FILTERS,
    crm_json,
    decode_call,
    decode_cursor,
    encode_call,
    page_size,
    session_stats_source,
    storable_call,
    timestamp,
    with_crm,
)
from calltrackd.store.sql import Params, calls_page, spend_sql, sql_where, window
from calltrackd.store.writebehind import CdrItem
from calltrackd.tracking.model import (
    CallRecord,
    WebhookDelivery,
    is_anonymous,
)
from calltrackd.tracking.reports import (
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitGroup,
    call_fact,
    cents,
    time_sql,
)

from .outbox import DELIVERY_COLS, NDELIVERY_COLS, delivery_row
from .plumbing import (
    _FACT_COLS,
    _FACT_UPSERT,
    SqlitePlumbing,
    _execute_rows,
    _fact_row,
)

log = structlog.get_logger(__name__)

CDR_BATCH_WINDOW = 0.02  # seconds a call record may wait for others to share its write
_CRM_OF_CALL = "(SELECT crm FROM report_calls r WHERE r.id = calls.id)"
_VISIT_COLS = ("channel", "source", "medium", "campaign", "term", "content", "landing_page",
               "referrer_domain")


def _in(column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def _floor(x: str) -> str:
    return f"CAST({x} AS INTEGER)"  # unix times are positive: truncation is the floor


def _pool_sql(pools: Mapping[str, str], args: list[Any]) -> str:
    """A call's pool from its number: one IN list per pool (SQLite makes each a lookup
    table once), not a CASE of every number, which a million calls would walk each."""
    by_pool: dict[str, list[str]] = {}
    for number, pool in pools.items():
        by_pool.setdefault(pool, []).append(number)
    if not by_pool:
        return "NULL"
    whens = []
    for pool, numbers in by_pool.items():
        whens.append(f"WHEN r.did IN ({','.join('?' * len(numbers))}) THEN ?")
        args += [*numbers, pool]
    return f"CASE {' '.join(whens)} END"


def _report_sql(q: ReportQuery) -> tuple[str, list[Any]]:
    """The SELECT of `report_calls` computing `CallGroup`s as `aggregate_calls` does."""
    exprs: list[str] = []
    args: list[Any] = []
    join = ""
    for dim in q.group_by:
        if local := time_sql(dim, q, _floor):  # the query's local time, not UTC's
            exprs.append(local)
        elif dim == "weekday":
            exprs.append("(r.day + 3) % 7 + 1")
        elif dim == "tag":
            exprs.append("t.tag")
            join = " LEFT JOIN call_tags t ON t.id = r.id"
        elif dim == "pool":
            exprs.append(_pool_sql(q.pools, args))
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
        elif local := time_sql(dim, q, _floor):
            cond, a = _in(local, values)
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
        # qualified and first_time are 0, 1 or NULL: their totals count the ones; missed
        # calls (an outcome, not answered) are count(r.outcome) less the answered ones
        f"SELECT {keys}count(*), total(r.outcome = 'answered'),"
        " count(r.outcome), total(r.qualified),"
        " total(r.first_time), count(DISTINCT r.caller), total(r.ring_ms),"
        " count(r.ring_ms), total(r.talk_ms), count(r.talk_ms), total(r.value_cents)"
        f" FROM report_calls r{join} WHERE {' AND '.join(conds)}{group}"
    )
    return sql, args + wargs


def _visit_expr(dim: str, q: ReportQuery) -> str:
    """A visit cell's value of `dim` in SQL, as `cell_value` gives it (a cell's time is
    its UTC hour's start, in the query's local time)."""
    if local := time_sql(dim, q, _floor, column="(v.hour * 3600)"):
        return local
    if dim == "hour":
        return "(v.hour % 24)"
    if dim == "day":
        return "(v.hour / 24)"  # integer division: hours since the epoch are positive
    if dim == "weekday":
        return "((v.hour / 24 + 3) % 7 + 1)"
    return f"nullif(v.{dim}, '')"


def _visits_sql(q: ReportQuery) -> tuple[str, list[Any]]:
    """The SELECT of `report_visits` computing `VisitGroup`s as `aggregate_visits` does,
    grouped in SQL: a period's cells are ~one per visit, too many to group in Python."""
    conds: list[str] = ["v.hour >= ?"]
    args: list[Any] = [int(q.since // 3600)]
    if q.until != float("inf"):
        conds.append("v.hour < ?")
        args.append(math.ceil(q.until / 3600))
    if q.tracker is not None:
        conds.append("v.tracker = ?")
        args.append(q.tracker)
    for dim, accepted in sorted(q.filters.items()):
        cond, a = _in(_visit_expr(dim, q), sorted(accepted, key=repr))
        conds.append(cond)
        args += a
    exprs = [_visit_expr(d, q) for d in q.group_by]
    keys = "".join(f"{e}, " for e in exprs)
    group = " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs))) if exprs else ""
    return (f"SELECT {keys}total(v.visitors), total(v.dynamic), count(*)"
            f" FROM report_visits v WHERE {' AND '.join(conds)}{group}", args)


class SqliteRecords(SqlitePlumbing):
    """Call records, statistics, reports, spend and their retention."""

    _cdr_window = CDR_BATCH_WINDOW

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
        caller = None if is_anonymous(record.caller) else (record.tracker, record.caller, row[2])
        await self._queue_call(row, [delivery_row(d) for d in deliveries], caller,
                               _fact_row(call_fact(record)))

    async def _commit_calls(self, batch: list[CdrItem]) -> list[Exception | None]:
        return await self._write(functools.partial(self._write_calls, batch))

    @staticmethod
    def _write_calls(batch: list[CdrItem], conn: sqlite3.Connection) -> list[Exception | None]:
        """One transaction for the batch. First all rows at once; if the database refuses
        one, again with a savepoint per save_call, so that the refused row fails its own
        save_call only."""
        def fast() -> None:
            _execute_rows(conn, "INSERT OR REPLACE INTO calls VALUES {values}", 11,
                          [item[0] for item in batch])
            _execute_rows(conn, f"INSERT INTO deliveries ({DELIVERY_COLS}) VALUES {{values}}"
                          " ON CONFLICT (id) DO NOTHING", NDELIVERY_COLS,
                          [d for item in batch for d in item[1]])
            _execute_rows(conn, "INSERT OR IGNORE INTO callers VALUES {values}", 3,
                          [item[2] for item in batch if item[2] is not None])
            _execute_rows(conn, _FACT_UPSERT, len(_FACT_COLS), [item[3] for item in batch])

        try:
            SqlitePlumbing._tx(conn, fast)
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
                        f"INSERT INTO deliveries ({DELIVERY_COLS})"
                        f" VALUES ({','.join('?' * NDELIVERY_COLS)})"
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

        SqlitePlumbing._tx(conn, body)
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
        where: Mapping[str, str] | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        a = Params(numbered=False)
        conds = window(a, tracker, since, until)
        if outcome is not None:
            conds.append(f"outcome = {a(outcome)}")
        if cursor is not None:
            ts, call_id = decode_cursor(cursor)
            conds.append(f"(started_ts < {a(ts)} OR (started_ts = {a(ts)} AND id < {a(call_id)}))")
        match = where or {}
        for key in FACT_FILTERS:  # as the report facts have them
            if key in match:
                conds.append("EXISTS (SELECT 1 FROM report_calls r WHERE r.id = calls.id"
                             f" AND r.{key} = {a(match[key])})")
        if "tag" in match:
            conds.append("EXISTS (SELECT 1 FROM call_tags t WHERE t.id = calls.id"
                         f" AND t.tag = {a(match['tag'])})")
        if "carrier" in match:  # in the CDR only (records before it have none)
            conds.append(f"json_extract(data, '$.carrier') = {a(match['carrier'])}")
        limit = page_size(limit)
        sql = (f"SELECT started_ts, id, data, {_CRM_OF_CALL} FROM calls{sql_where(conds)}"
               f" ORDER BY 1 DESC, 2 DESC LIMIT {a(limit + 1)}")
        rows = await self._read(lambda c: c.execute(sql, a.values).fetchall())
        return calls_page(rows, limit)

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
        a = Params(numbered=False)
        clause = sql_where(window(a, tracker, since, until))
        sql = (
            "SELECT tracker, coalesce(kind, 'none'), channel, utm_source, utm_medium, count(*),"
            " total(outcome = 'answered'), total(outcome IS NOT NULL AND outcome != 'answered'),"
            f" total(qualified = 1), total(first_time = 1) FROM calls{clause}"
            " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 6 DESC"
        )
        rows = await self._read(lambda c: c.execute(sql, a.values).fetchall())
        return [CallStats(*r[:6], *map(int, r[6:])) for r in rows]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        await self._flush_for_count()  # sessions are written behind: count the newest too
        a = Params(numbered=False)
        clause = sql_where(window(a, tracker, since, until, col="first_seen"))
        sql = (
            "SELECT tracker, utm_source, utm_medium, count(*), total(dynamic)"
            f" FROM sessions{clause} GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC"
        )
        rows = await self._read(lambda c: c.execute(sql, a.values).fetchall())
        return [VisitorStats(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        await self._flush_behind()
        sql = ("SELECT first_seen, last_seen, utm_source, utm_medium FROM sessions"
               " WHERE first_seen >= ? AND first_seen < ? AND tracker = ? ORDER BY first_seen")
        rows = await self._read(lambda c: c.execute(sql, (since, until, tracker)).fetchall())
        return [Visit(tracker, r[0], r[1], r[2], r[3]) for r in rows]

    async def window_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[CallStats], list[AttributionStats]]:
        return (await self.call_stats(tracker, since, until),
                await self.attribution_stats(tracker, since, until))

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        a = Params(numbered=False)
        clause = sql_where(window(a, tracker, since, until))
        sql = (
            "SELECT tracker, json_extract(data, '$.attribution.pool'), coalesce(kind, 'none'),"
            " count(*), count(json_extract(data, '$.attribution.confidence')),"
            f" total(json_extract(data, '$.attribution.confidence')) FROM calls{clause}"
            " GROUP BY 1, 2, 3"
        )
        rows = await self._read(lambda c: c.execute(sql, a.values).fetchall())
        return [AttributionStats(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    # --- end of holder history ----------------------------------------------------------
    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        crm = crm_json(record)
        value = cents(record.value)
        drows = [delivery_row(d) for d in deliveries]

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
                    f"INSERT INTO deliveries ({DELIVERY_COLS})"
                    f" VALUES ({','.join('?' * NDELIVERY_COLS)}) ON CONFLICT (id) DO NOTHING",
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
            total, answered, ended, *rest = map(int, r[n:])
            out.append(CallGroup(key, total, answered, ended - answered, *rest))
        return out

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        await self._flush_behind()  # counters are written behind: count the newest too
        sql, args = _visits_sql(query)
        rows = await self._report(lambda c: c.execute(sql, args).fetchall())
        n = len(query.group_by)
        return [VisitGroup(tuple(r[:n]), int(r[n]), int(r[n + 1])) for r in rows if r[n + 2]]

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
        a = Params(numbered=False)
        sql = spend_sql(a, tracker, since_day, until_day)
        rows = await self._report(lambda c: c.execute(sql, a.values).fetchall())
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


