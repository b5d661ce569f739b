"""The answer of `GET /v1/reports`: call groups, visit groups and spend joined into rows
(with CPL, revenue and ROI) and their totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .groups import CallGroup, VisitGroup
from .localtime import day_text
from .query import ReportQuery


def _show(dim: str, value: Any) -> Any:
    return day_text(value) if dim == "day" and value is not None else value


def _ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def _sort_key(value: Any) -> tuple[int, str]:
    return (1, "") if value is None else (0, f"{value:>12}" if isinstance(value, int)
                                          else str(value))


def build_rows(query: ReportQuery, calls: Sequence[CallGroup], visits: Sequence[VisitGroup],
               spend: Mapping[tuple[Any, ...], tuple[int, frozenset[str]]]
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of the answer (every key that has calls, visitors or spend) and totals.

    - visitors, visitors_dynamic and coverage are null when the query uses a dimension
      a visit does not have (static_channel, pool, first_time, tag);
    - spend, cpl and roi are null when it uses one spend does not have (anything but
      source, medium, campaign, day, weekday), and spend is null where currencies mix;
    - cpl = spend ÷ qualified calls; roi = (revenue - spend) ÷ spend; revenue is the sum
      of the calls' `value`."""
    with_visits, with_spend = query.visits_apply(), query.spend_applies()
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}

    def row(key: tuple[Any, ...]) -> dict[str, Any]:
        r = by_key.get(key)
        if r is None:
            r = by_key[key] = {"g": CallGroup(key), "v": VisitGroup(key), "s": None}
        return r

    for g in calls:
        row(g.key)["g"] = g
    if with_visits:
        for v in visits:
            row(v.key)["v"] = v
    if with_spend:
        for key, s in spend.items():
            row(key)["s"] = s
    total_g, total_v = CallGroup(()), VisitGroup(())
    total_s: tuple[int, frozenset[str]] | None = (0, frozenset()) if with_spend else None
    out = []
    for key in sorted(by_key, key=lambda k: tuple(_sort_key(v) for v in k)):
        r = by_key[key]
        g, v, s = r["g"], r["v"], r["s"]
        for name in ("calls", "answered", "missed", "qualified", "first_time", "ring_ms",
                     "ring_n", "talk_ms", "talk_n", "value_cents"):
            setattr(total_g, name, getattr(total_g, name) + getattr(g, name))
        total_v.visitors += v.visitors
        total_v.dynamic += v.dynamic
        if total_s is not None and s is not None:
            total_s = (total_s[0] + s[0], total_s[1] | s[1])
        if with_spend and s is None:
            s = (0, frozenset())
        out.append(_row(query, key, g, v if with_visits else None, s, with_spend))
    totals = _row(query, None, total_g, total_v if with_visits else None, total_s, with_spend)
    totals.pop("key")
    totals["unique_callers"] = None  # not additive over rows: see each row
    return out, totals


def _row(query: ReportQuery, key: tuple[Any, ...] | None, g: CallGroup, v: VisitGroup | None,
         s: tuple[int, frozenset[str]] | None, with_spend: bool) -> dict[str, Any]:
    spend: float | None = None
    currency: str | None = None
    if with_spend and s is not None and len(s[1]) <= 1:
        spend = s[0] / 100
        currency = next(iter(s[1]), None)
    revenue = g.value_cents / 100
    return {
        "key": {d: _show(d, k) for d, k in zip(query.group_by, key, strict=True)}
        if key is not None else None,
        "visitors": v.visitors if v else None,
        "visitors_dynamic": v.dynamic if v else None,
        "coverage": _ratio(v.dynamic, v.visitors) if v else None,
        "calls": g.calls,
        "answered": g.answered,
        "missed": g.missed,
        "qualified": g.qualified,
        "first_time": g.first_time,
        "unique_callers": g.unique_callers if g.unique_callers >= 0 else None,
        "avg_ring_seconds": _ratio(g.ring_ms, g.ring_n * 1000, 2),
        "avg_talk_seconds": _ratio(g.talk_ms, g.talk_n * 1000, 2),
        "spend": spend,
        "currency": currency,
        "cpl": round(spend / g.qualified, 2) if spend is not None and g.qualified else None,
        "revenue": revenue,
        "roi": round((revenue - spend) / spend, 4) if spend else None,
    }
