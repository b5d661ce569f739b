"""Aggregation: calls (`CallFact`s) and visit cells into the groups of a report's keys.
The reference the stores match (SQL on SQLite and PostgreSQL, `encoded.py` on Redis)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .facts import CallFact
from .localtime import TIME_DIMENSIONS, UTC_SEGMENTS, Segments, local_day_hour, weekday
from .query import ReportQuery


def _fact_values(fact: CallFact, dim: str, pools: Mapping[str, str],
                 segs: Segments = UTC_SEGMENTS) -> tuple[Any, ...]:
    """The fact's value(s) of a dimension: one, or one per tag (None without tags)."""
    if dim == "tag":
        return fact.tags or (None,)
    if dim in TIME_DIMENSIONS:
        day, hour = local_day_hour(segs, fact.ts)
        return (hour,) if dim == "hour" else (day,) if dim == "day" else (weekday(day),)
    if dim == "pool":
        return (pools.get(fact.did),)
    return (getattr(fact, dim),)


@dataclass(slots=True)
class CallGroup:
    """Calls of one report key; durations in ms, value in cents."""

    key: tuple[Any, ...]
    calls: int = 0
    answered: int = 0
    missed: int = 0
    qualified: int = 0
    first_time: int = 0
    unique_callers: int = 0
    ring_ms: int = 0
    ring_n: int = 0
    talk_ms: int = 0
    talk_n: int = 0
    value_cents: int = 0


def _keys(fact: CallFact, query: ReportQuery) -> list[tuple[Any, ...]]:
    keys: list[tuple[Any, ...]] = [()]
    segs = query.segments()
    for dim in query.group_by:
        values = _fact_values(fact, dim, query.pools, segs)
        if dim == "tag" and "tag" in query.filters:  # grouped by tag, only those asked for
            values = tuple(v for v in values if v in query.filters["tag"])
        keys = [(*k, v) for k in keys for v in values]
    return keys


def _passes(fact: CallFact, query: ReportQuery) -> bool:
    if query.tracker is not None and fact.tracker != query.tracker:
        return False
    if not query.since <= fact.ts < query.until:
        return False
    segs = query.segments()
    for dim, accepted in query.filters.items():
        if not any(v in accepted for v in _fact_values(fact, dim, query.pools, segs)):
            return False
    return True


def aggregate_calls(facts: Iterable[CallFact], query: ReportQuery) -> list[CallGroup]:
    """The reference aggregation (the Redis store uses it; SQLite does the same in SQL).

    A call with several tags counts once under each tag when grouped by tag (under each
    tag asked for, when filtered by tag too); a call without tags has the tag None.
    Outcomes: answered, or missed once ended otherwise."""
    groups: dict[tuple[Any, ...], CallGroup] = {}
    callers: dict[tuple[Any, ...], set[str]] = {}
    for fact in facts:
        if not _passes(fact, query):
            continue
        for key in _keys(fact, query):
            g = groups.get(key)
            if g is None:
                g = groups[key] = CallGroup(key)
                callers[key] = set()
            g.calls += 1
            if fact.outcome == "answered":
                g.answered += 1
            elif fact.outcome is not None:
                g.missed += 1
            g.qualified += fact.qualified is True
            g.first_time += fact.first_time is True
            if fact.caller is not None:
                callers[key].add(fact.caller)
            if fact.ring_ms is not None:
                g.ring_ms += fact.ring_ms
                g.ring_n += 1
            if fact.talk_ms is not None:
                g.talk_ms += fact.talk_ms
                g.talk_n += 1
            g.value_cents += fact.value_cents or 0
    for key, g in groups.items():
        g.unique_callers = len(callers[key])
    return list(groups.values())


@dataclass(slots=True)
class VisitGroup:
    key: tuple[Any, ...]
    visitors: int = 0
    dynamic: int = 0


_CELL_INDEX = {"channel": 1, "source": 2, "medium": 3, "campaign": 4, "term": 5,
               "content": 6, "landing_page": 7, "referrer_domain": 8}


def cell_value(cell: Sequence[Any], dim: str, segs: Segments = UTC_SEGMENTS) -> Any:
    """A visit cell's value of a (visit) dimension, typed as the report shows it; a
    cell's time is its UTC hour's start in local time."""
    if dim in TIME_DIMENSIONS:
        day, hour = local_day_hour(segs, int(cell[0]) * 3600)
        if dim == "hour":
            return hour
        return day if dim == "day" else weekday(day)
    return cell[_CELL_INDEX[dim]] or None


def aggregate_visits(cells: Iterable[tuple[Sequence[Any], int, int]],
                     query: ReportQuery) -> list[VisitGroup]:
    """Visit cells (cell, visitors, dynamic) of the query's tracker and hours → groups.
    The period applies by hour: a visit counts when its first hour is in [since, until)."""
    lo, hi = query.since // 3600, query.until / 3600
    segs = query.segments()
    groups: dict[tuple[Any, ...], VisitGroup] = {}
    for cell, visitors, dynamic in cells:
        if not lo <= int(cell[0]) < hi:
            continue
        if any(cell_value(cell, d, segs) not in ok for d, ok in query.filters.items()):
            continue
        key = tuple(cell_value(cell, d, segs) for d in query.group_by)
        g = groups.get(key)
        if g is None:
            g = groups[key] = VisitGroup(key)
        g.visitors += visitors
        g.dynamic += dynamic
    return list(groups.values())
