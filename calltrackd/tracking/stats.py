"""The figures of `/v1/stats` (pure): per tracker and source, per pool, and how accurate
the attribution is expected to be.

- `accuracy` is the trade's figure: 1 - calls to a default number / all calls.
- `estimated_accuracy` is the expected share of calls attributed to the visitor who
  really called: the mean confidence of the calls (`confidence.py`), where a static
  number counts 1 and a call that names no visitor (`default`, `none`) 0.
- A pool's `recommended_size` and `size_curve` come from replaying its visits of the
  period (at most the last `SIZING_HISTORY` of it) at other sizes (`simulator.py`);
  the replays are cached (`SizingCache`). `replayed_accuracy` is the replay's figure at
  the pool's current size; the curve is moved to pass through the pool's own calls
  there (`anchored_curve`), so the curve and `estimated_accuracy` agree at the current
  size once the pool has calls enough to say.
- `shed`: INVITEs to the tracker's numbers answered 503 before a call existed (overload,
  `sip.max_calls`, drain), counted by this node since it started: not windowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from calltrackd.store.base import AttributionStats, CallStats, PoolStats, Visit, VisitorStats
from calltrackd.tracking.allocator import match_pool
from calltrackd.tracking.confidence import DelayModel
from calltrackd.tracking.model import Tracker
from calltrackd.tracking.simulator import Rule, SimVisit, Sizing, recommend

SIZING_HISTORY = 3 * 86400.0  # the most visits a pool's replay takes: the period's last 3 days
SIZING_TTL = 300.0  # seconds a pool's replay is reused
ANCHOR_CALLS = 30.0  # how many calls the replay's figure weighs against a pool's own


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _source(src: str | None, medium: str | None) -> str:
    return f"{src or '(direct)'}/{medium or '(none)'}"


def _call_source(c: CallStats) -> str:
    if c.kind == "static":
        return c.channel or "static"
    if c.kind in ("dynamic", "expired"):
        return _source(c.utm_source, c.utm_medium)
    if c.kind == "default" and c.channel:
        return f"default/{c.channel}"  # a pool's own default number
    return c.kind


def estimated_accuracy(rows: Sequence[AttributionStats]) -> float | None:
    """The mean confidence of these calls; a record without a confidence (older ones,
    or one whose attribution failed) counts 1 when static, 0 when it names nobody, and
    is left out when it names a visitor."""
    total, count = _confidences(rows)
    return round(total / count, 4) if count else None


def _confidences(rows: Sequence[AttributionStats]) -> tuple[float, int]:
    """(sum of the confidences, calls counted) as `estimated_accuracy` counts them."""
    total = 0.0
    count = 0
    for r in rows:
        unscored = r.calls - r.scored
        total += r.confidence
        count += r.scored
        if r.kind == "static":
            total += unscored
            count += unscored
        elif r.kind in ("default", "none"):
            count += unscored
    return total, count


def anchored_curve(sizing: Sizing, size: int, rows: Sequence[AttributionStats]
                   ) -> tuple[list[dict[str, Any]], float | None, float | None]:
    """A pool's size curve as `/v1/stats` gives it, with its attainable accuracy and the
    replay's own figure at the pool's current size.

    The replay (simulator.py) says how the accuracy changes with the size; the pool's
    calls say where it is: the curve is moved so that at the current size it passes
    through the calls' mean confidence weighed against the replay's figure as if that
    were `ANCHOR_CALLS` calls ((sum of confidences + 30 x replayed) / (calls + 30)). So
    with many calls the curve meets the pool's `estimated_accuracy` at its size, and
    with few (a new pool, a quiet day) it stays the replay's; the shift is the same at
    every size, clipped to [0, 1]. `recommended_size` is the replay's (a shift does not
    move where the curve flattens)."""
    at = {c.size: c.estimated_accuracy for c in sizing.curve}
    replayed = at.get(size)
    if replayed is None:
        return ([{"size": c.size, "estimated_accuracy": c.estimated_accuracy}
                 for c in sizing.curve], sizing.attainable_accuracy or None, None)
    total, count = _confidences(rows)
    shift = (total + ANCHOR_CALLS * replayed) / (count + ANCHOR_CALLS) - replayed

    def moved(x: float) -> float:
        return round(min(1.0, max(0.0, x + shift)), 4)

    return ([{"size": c.size, "estimated_accuracy": moved(c.estimated_accuracy)}
             for c in sizing.curve], moved(sizing.attainable_accuracy), replayed)


def pool_visits(tracker: Tracker, visits: Sequence[Visit]) -> dict[str, list[SimVisit]]:
    """Pool name → the visits of the sources it serves."""
    out: dict[str, list[SimVisit]] = {p.name: [] for p in tracker.pools}
    for v in visits:
        pool = match_pool(tracker.pools, v.utm_source, v.utm_medium)
        if pool is not None:
            out[pool.name].append(SimVisit(v.first_seen, max(v.first_seen, v.last_seen)))
    return out


def size_pool(tracker: Tracker, visits: Sequence[SimVisit], model: DelayModel,
              current: int) -> Sizing:
    """Replay a pool's visits at candidate sizes under the tracker's rule."""
    rule = Rule(tracker.reservation_ttl, tracker.cooldown, tracker.attribution_grace)
    return recommend(visits, rule, model, current)


class SizingCache:
    """Replays per (tracker, pool) and period, reused for `ttl` seconds (a replay of
    three days of a busy pool takes about a second). A period is `window(since,
    until)`: its ends to the `ttl`, so the default "last 24 hours" of requests made
    within one `ttl` share a replay."""

    def __init__(self, ttl: float = SIZING_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[float, Sizing, tuple[int, int]]] = {}

    def window(self, since: float, until: float) -> tuple[int, int]:
        return int(since // self.ttl), int(until // self.ttl)

    def get(self, key: tuple[str, str], now: float, window: tuple[int, int] = (0, 0)
            ) -> Sizing | None:
        hit = self._entries.get(key)
        return (hit[1] if hit is not None and now - hit[0] < self.ttl and hit[2] == window
                else None)

    def put(self, key: tuple[str, str], now: float, sizing: Sizing,
            window: tuple[int, int] = (0, 0)) -> None:
        self._entries[key] = (now, sizing, window)

    def split(self, tracker: str, pools: Sequence[PoolStats], now: float,
              window: tuple[int, int] = (0, 0)) -> tuple[dict[str, Sizing], dict[str, int]]:
        """The tracker's pools as (pool → fresh cached replay of the period, pool →
        current size of those still to replay)."""
        hits: dict[str, Sizing] = {}
        missing: dict[str, int] = {}
        for p in pools:
            if p.tracker != tracker:
                continue
            hit = self.get((tracker, p.pool), now, window)
            if hit is not None:
                hits[p.pool] = hit
            else:
                missing[p.pool] = p.size
        return hits, missing


def tracker_stats(tracker: Tracker, calls: Sequence[CallStats],
                  visitors: Sequence[VisitorStats], pools: Sequence[PoolStats],
                  attributions: Sequence[AttributionStats],
                  sizings: Mapping[str, Sizing] | None = None,
                  shed: Mapping[str, int] | None = None) -> dict[str, Any]:
    """One tracker's entry of `/v1/stats`; `shed`: tracker id → INVITEs shed
    (`Engine.shed_counts()["trackers"]`)."""
    sizings = sizings or {}
    mine = [c for c in calls if c.tracker == tracker.id]
    sources = []
    totals = dict.fromkeys(("calls", "answered", "missed", "qualified", "first_time"), 0)
    default_calls = 0
    for c in mine:
        row: dict[str, Any] = {"source": _call_source(c), "kind": c.kind, "channel": c.channel,
                               "utm_source": c.utm_source, "utm_medium": c.utm_medium}
        for k in totals:
            row[k] = getattr(c, k)
            totals[k] += getattr(c, k)
        if c.kind == "default":
            default_calls += c.calls
        sources.append(row)
    vis = [v for v in visitors if v.tracker == tracker.id]
    all_visitors = sum(v.visitors for v in vis)
    dynamic = sum(v.dynamic for v in vis)
    served = _pool_visitors(tracker, vis)
    att = [a for a in attributions if a.tracker == tracker.id]
    pool_rows = []
    for p in pools:
        if p.tracker != tracker.id:
            continue
        sizing = sizings.get(p.pool)
        ours = [a for a in att if a.pool == p.pool]
        curve, attainable, replayed = (anchored_curve(sizing, p.size, ours) if sizing
                                       and sizing.curve else ([], None, None))
        row = {
            "pool": p.pool, "size": p.size, "free": p.free, "reserved": p.reserved,
            "cooling": p.cooling, "peak": p.peak, "shortfall": p.shortfall,
            "calls": sum(a.calls for a in ours),
            "estimated_accuracy": estimated_accuracy(ours),
            "recommended_size": (sizing.recommended_size if sizing and sizing.curve
                                 else peak_rule_size(p, *served.get(p.pool, (0, 0)))),
            "attainable_accuracy": attainable,
            "replayed_accuracy": replayed,
            "size_curve": curve,
        }
        pool_rows.append(row)
    return {
        "tracker": tracker.id,
        **totals,
        "visitors": all_visitors,
        "coverage": _ratio(dynamic, all_visitors),
        "accuracy": (round(1 - default_calls / totals["calls"], 4) if totals["calls"]
                     else None),
        "estimated_accuracy": estimated_accuracy(att),
        "shed": (shed or {}).get(tracker.id, 0),
        "sources": sources,
        "visitor_sources": [{"source": _source(v.utm_source, v.utm_medium),
                             "visitors": v.visitors, "dynamic": v.dynamic,
                             "coverage": _ratio(v.dynamic, v.visitors)} for v in vis],
        "pools": pool_rows,
    }


def _pool_visitors(tracker: Tracker, vis: Sequence[VisitorStats]) -> dict[str, tuple[int, int]]:
    """Pool name → (visitors of the sources it serves, those of them given a number)."""
    out: dict[str, tuple[int, int]] = {}
    for v in vis:
        pool = match_pool(tracker.pools, v.utm_source, v.utm_medium)
        if pool is not None:
            seen, dynamic = out.get(pool.name, (0, 0))
            out[pool.name] = (seen + v.visitors, dynamic + v.dynamic)
    return out


def peak_rule_size(pool: PoolStats, visitors: int, dynamic: int) -> int:
    """The rule of thumb, for a pool without visits to replay: its peak concurrent
    demand + 20% (the demand estimated as peak ÷ coverage when visitors were turned
    away, e.g. a pool of 10 that served 50% of its visitors: ceil(10 / 0.5 * 1.2) = 24).
    """
    # in integers, ceil(a / b) = -(-a // b): no float rounding up an exact figure
    if pool.shortfall and 0 < dynamic < visitors:
        return -(-pool.peak * visitors * 6 // (dynamic * 5))
    return -(-pool.peak * 6 // 5)
