"""A pool replayed at other sizes: how accurate would its attributions be with N numbers?

Pure: the observed visits of a pool (first request, last activity) go through the
allocation rule the store applies (the number idle longest, never one resting within
`cooldown`, held until `reservation_ttl` after the last activity; a visitor turned away
asks again at every ping while the visit lasts), and each visitor's chance to be
attributed right is read off the tracker's delay model (`confidence.DelayModel`):

- a call during the visit is right for the part of the visit the visitor held a number;
- a call after leaving is right while the visitor still holds the number, and after
  that until someone else takes the number or `attribution_grace` runs out (then the
  call goes to the next holder or to nobody).

Every visitor is taken as equally likely to call, so the pool's expected accuracy is the
mean of those chances (0 for a visitor who never got a number: the call goes to a
default number). An unlimited pool (`size=None`) serves everyone and never hands a
number out again: the attainable accuracy. `recommend` finds the smallest pool within
`tolerance` (relative) of it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from calltrackd.tracking.confidence import DelayModel


@dataclass(frozen=True, slots=True)
class SimVisit:
    start: float  # first request (unix seconds)
    end: float  # last activity


@dataclass(frozen=True, slots=True)
class Rule:
    """The tracker's allocation and attribution settings the replay follows."""

    ttl: float
    cooldown: float
    grace: float

    @property
    def ping_every(self) -> float:
        # the snippet pings every third of the reservation, at most every minute
        return min(self.ttl / 3, 60.0) if self.ttl > 0 else 60.0


@dataclass(frozen=True, slots=True)
class CurvePoint:
    size: int
    estimated_accuracy: float


@dataclass(frozen=True, slots=True)
class Sizing:
    recommended_size: int
    attainable_accuracy: float
    curve: tuple[CurvePoint, ...]


def accuracy(visits: Sequence[SimVisit], size: int | None, rule: Rule,
             model: DelayModel) -> float:
    """Expected share of calls attributed to the right visitor with `size` numbers
    (None: unlimited). `visits` sorted by start."""
    if not visits:
        return 0.0
    n = len(visits)
    if size is None:
        late = model.after_cdf(rule.ttl + rule.grace)
        return model.during + late
    got = [math.inf] * n  # when each visitor got a number
    gap = [math.inf] * n  # from the end of its hold until the number was taken again
    idle: list[tuple[float, int]] = [(0.0, i) for i in range(size)]  # available at, number
    held: list[tuple[float, int, int]] = []  # until, number, visitor
    last: dict[int, tuple[int, float]] = {}  # number → (last visitor, its hold's end)
    attempts: list[tuple[float, int]] = [(v.start, i) for i, v in enumerate(visits)]
    heapq.heapify(attempts)
    every = rule.ping_every
    while attempts:
        t, i = heapq.heappop(attempts)
        while held and held[0][0] <= t:
            until, number, who = heapq.heappop(held)
            heapq.heappush(idle, (until + rule.cooldown, number))
            last[number] = (who, until)
        if idle and idle[0][0] <= t:
            _, number = heapq.heappop(idle)
            previous = last.pop(number, None)
            if previous is not None:
                gap[previous[0]] = t - previous[1]
            got[i] = t
            v = visits[i]
            heapq.heappush(held, (max(v.end, t) + rule.ttl, number, i))
        elif t + every <= visits[i].end:
            heapq.heappush(attempts, (t + every, i))
    total = 0.0
    for i, v in enumerate(visits):
        a = got[i]
        if a == math.inf:
            continue  # every call of this visitor went to a default number
        span = v.end - v.start
        during = 1.0 if span <= 0 else max(0.0, (v.end - a) / span)
        total += model.during * during + model.after_cdf(rule.ttl + min(gap[i], rule.grace))
    return total / n


def recommend(visits: Sequence[SimVisit], rule: Rule, model: DelayModel,
              current: int, tolerance: float = 0.03) -> Sizing:
    """The smallest pool whose accuracy is within `tolerance` of an unlimited pool's,
    and the curve of sizes around it (and the pool's current size)."""
    visits = sorted(visits, key=lambda v: v.start)
    limit = accuracy(visits, None, rule, model)
    if not visits:
        return Sizing(0, 0.0, ())
    memo: dict[int, float] = {}

    def acc(size: int) -> float:
        if size not in memo:
            memo[size] = accuracy(visits, size, rule, model)
        return memo[size]

    target = limit * (1 - tolerance)
    lo, hi = 1, max(1, _never_reused(visits, rule))
    while acc(hi) < target and hi < len(visits):  # not expected: the bound is the limit
        hi = min(2 * hi, len(visits))
    while lo < hi:  # accuracy grows with the size: the first size reaching the target
        mid = (lo + hi) // 2
        if acc(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    sizes = {max(1, round(best * f)) for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5,
                                                2.0, 3.0)}
    if current > 0:
        sizes.add(current)
    curve = tuple(CurvePoint(s, round(acc(s), 4)) for s in sorted(sizes))
    return Sizing(best, round(limit, 4), curve)


def _never_reused(visits: Sequence[SimVisit], rule: Rule) -> int:
    """Numbers enough that none is handed out again within its grace: the peak count of
    visits overlapping once each is stretched by the reservation, the cool-down and the
    grace (the longest-idle rule then reuses only numbers idle longer than that)."""
    stretch = rule.ttl + rule.cooldown + rule.grace + rule.ping_every
    edges = sorted([(v.start, 1) for v in visits] + [(v.end + stretch, -1) for v in visits])
    peak = depth = 0
    for _, step in edges:
        depth += step
        peak = max(peak, depth)
    return peak
