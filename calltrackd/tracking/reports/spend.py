"""Ad spend (`PUT /v1/spend`): rows, their sums by report key, and the coarser query
(and roll-up of groups) whose rows can carry spend when the asked one cannot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from .groups import CallGroup, VisitGroup
from .localtime import day_number, local_midnight, weekday
from .query import SPEND_DIMENSIONS, ReportQuery


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Ad spend of one tracker, day and source/medium/campaign ("" where not given)."""

    tracker: str
    day: str  # YYYY-MM-DD
    source: str
    medium: str
    campaign: str
    amount_cents: int
    currency: str

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.tracker, self.day, self.source, self.medium, self.campaign)

    def to_json(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "day": self.day, "source": self.source or None,
                "medium": self.medium or None, "campaign": self.campaign or None,
                "amount": self.amount_cents / 100, "currency": self.currency}


def spend_value(row: SpendRow, dim: str) -> Any:
    if dim == "day":
        return day_number(row.day)
    if dim == "weekday":
        return weekday(day_number(row.day))
    value: str = getattr(row, dim)
    return value or None


def aggregate_spend(rows: Iterable[SpendRow], query: ReportQuery
                    ) -> dict[tuple[Any, ...], tuple[int, frozenset[str]]]:
    """Spend by report key: cents and the currencies summed. Only for queries whose
    dimensions spend has (`spend_applies`); a day's spend counts when the day (a local
    day of the query's zone) starts in [since, until)."""
    out: dict[tuple[Any, ...], tuple[int, frozenset[str]]] = {}
    if not query.spend_applies():
        return out
    for row in rows:
        if query.tracker is not None and row.tracker != query.tracker:
            continue
        if not query.since <= local_midnight(date.fromisoformat(row.day), query.zone) \
                < query.until:
            continue
        if any(spend_value(row, d) not in ok for d, ok in query.filters.items()):
            continue
        key = tuple(spend_value(row, d) for d in query.group_by)
        total, currencies = out.get(key, (0, frozenset()))
        out[key] = (total + row.amount_cents, currencies | {row.currency})
    return out


def spend_query(query: ReportQuery) -> ReportQuery | None:
    """For a query whose rows cannot carry spend (grouped by term, say): the coarser
    query on its spend dimensions (campaign of campaign,term) whose rows can, or None.
    Not for tags (a call counts under each of its tags) or filters spend does not have."""
    if query.spend_applies() or "tag" in query.group_by:
        return None
    dims = tuple(d for d in query.group_by if d in SPEND_DIMENSIONS)
    if not dims or not all(d in SPEND_DIMENSIONS for d in query.filters):
        return None
    return replace(query, group_by=dims)


def rollup(query: ReportQuery, coarse: ReportQuery, calls: Sequence[CallGroup],
           visits: Sequence[VisitGroup]) -> tuple[list[CallGroup], list[VisitGroup]]:
    """The groups of `query` added up to the keys of `coarse` (its dimensions a subset).
    unique_callers is not additive: -1 marks it unknown."""
    pick = [query.group_by.index(d) for d in coarse.group_by]
    out: dict[tuple[Any, ...], CallGroup] = {}
    for g in calls:
        key = tuple(g.key[i] for i in pick)
        total = out.setdefault(key, CallGroup(key, unique_callers=-1))
        for name in ("calls", "answered", "missed", "qualified", "first_time", "ring_ms",
                     "ring_n", "talk_ms", "talk_n", "value_cents"):
            setattr(total, name, getattr(total, name) + getattr(g, name))
    vout: dict[tuple[Any, ...], VisitGroup] = {}
    for v in visits:
        key = tuple(v.key[i] for i in pick)
        vt = vout.setdefault(key, VisitGroup(key))
        vt.visitors += v.visitors
        vt.dynamic += v.dynamic
    return list(out.values()), list(vout.values())
