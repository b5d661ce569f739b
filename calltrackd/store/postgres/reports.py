"""The PostgreSQL store's reports (`GET /v1/reports`): the SQL over `report_calls` and
`report_visits` that computes what `reports.aggregate_calls` and `aggregate_visits` do,
run with memory enough to hash its groups; and the spend rows (`PUT /v1/spend`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from calltrackd.store.sql import Params, spend_sql
from calltrackd.tracking.reports import CallGroup, ReportQuery, SpendRow, VisitGroup, time_sql

from .plumbing import PostgresPlumbing, _t

REPORT_WORK_MEM = "256MB"  # a report's hash tables (per statement, released at its end)


def _floor(x: str) -> str:
    return f"floor({x})::integer"


def _report_sql(q: ReportQuery) -> tuple[str, str, list[Any]]:
    """Two SELECTs over `report_calls` that together compute the `CallGroup`s of
    `aggregate_calls`: the sums by key (a hash aggregation), and the unique callers by
    key (distinct (key, caller) pairs, counted). One count(DISTINCT) in the first would
    make PostgreSQL sort all rows by key and caller: four times slower at 1M calls."""
    a = Params(numbered=True)
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
    a = Params(numbered=True)

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


class PostgresReports(PostgresPlumbing):
    """Reports and spend."""

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
        a = Params(numbered=True)
        rows = await self._fetch(spend_sql(a, tracker, since_day, until_day), *a.values)
        return [SpendRow(*r) for r in rows]
