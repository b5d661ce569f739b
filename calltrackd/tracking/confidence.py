"""How sure an attribution is: the probability that the named visitor really called.

Theory of operation. A visitor who calls does so at some delay after leaving the site
(its last activity; negative: during the visit). Every visitor who held the dialled
number recently is a candidate caller, and each calls *now* at a rate given by that
delay's density in the tracker's delay model:

- a visitor still on the site (it holds the number and was active within the snippet's
  ping interval) calls at `during / (mean_visit + ping interval)` per second: the share
  of calls made while a holder counts as on the site, spread over the time it counts so
  (its hold, first request to last activity, and one ping interval after the last
  activity, when it may still be reading the page). Spreading it over the hold alone
  overrated a visiting holder against the visitors who left by about half (the
  estimate was 5.5-6.3 points too high at half the recommended pool size);
- a visitor who left (its last activity is `until - reservation_ttl`: every request
  moves the reservation's end to `reservation_ttl` after it), holding the number still
  or not, calls at the density of its delay since leaving: `share of the delay's bin /
  the bin's width`; 0 beyond the last bin.

The attribution's confidence is the named visitor's rate over the sum of every
candidate's (Bayes' rule with the same prior chance to call for every visitor: it
cancels). So a number that changed hands a minute ago, a hold that ended hours ago and a
number held by many visitors since all lower it, and a call to a quiet number from the
one visitor who just left raises it. Calls that name no visitor (`default`, `none`)
have confidence 0, static numbers 1.

The delay model starts from the trade's figures (65% of calls during the visit, 25% in
the 30 minutes after, 10% 1-48 h later) stated for a 6-minute reservation and stretched
with `reservation_ttl`. The late 10% are spread log-uniformly (density ~ 1/delay: as
many between 1 and 2 hours as between 24 and 48), as callbacks from a noted number
thin out with time; spread evenly over the 47 hours, the prior gave callers of the first
hours an eighth of their weight, and their calls to a number someone else had taken
since went to that someone with a confidence near 1. `DelayLearner` then moves the model
toward the tracker's own calls by online expectation-maximisation: each call adds its
candidates' posterior shares to the bins of their delays. A restart rebuilds it from the
stored call records (`DelayLearner.observe_record`).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from calltrackd.tracking.model import Hold

REFERENCE_TTL = 360.0  # the reservation the prior's delays are stated for
_M = 60.0
_H = 3600.0
# bin edges (seconds after leaving, for a 6-minute reservation): finer where the
# share changes fast, up to 72 h (the longest delay the trade reports is 48 h)
_EDGES = (0.0, 2 * _M, 6 * _M, 15 * _M, 30 * _M, _H, 2 * _H, 4 * _H, 8 * _H, 16 * _H,
          32 * _H, 48 * _H, 72 * _H)


def _prior_after() -> tuple[float, ...]:
    """Shares of calls per bin after leaving: 25% spread evenly over the first
    30 minutes, 10% evenly over 1-48 h, a trace between and beyond."""
    shares = []
    for lo, hi in itertools.pairwise(_EDGES):
        share = 0.25 * (min(hi, 30 * _M) - min(lo, 30 * _M)) / (30 * _M)
        if hi > _H and lo < 48 * _H:
            share += 0.10 * math.log(min(hi, 48 * _H) / max(lo, _H)) / math.log(48)
        if lo == 30 * _M or lo == 48 * _H:
            share += 0.002
        shares.append(share)
    return tuple(shares)


@dataclass(frozen=True, slots=True)
class DelayModel:
    """When a tracker's callers call, relative to when they left the site."""

    during: float  # share of calls made during the visit
    edges: tuple[float, ...]  # bin edges in seconds after leaving; edges[0] == 0
    after: tuple[float, ...]  # share of calls in [edges[i], edges[i+1])
    ttl: float  # the tracker's reservation_ttl
    mean_visit: float  # seconds from a visitor's first request to its last, on average

    @classmethod
    def prior(cls, ttl: float) -> DelayModel:
        scale = ttl / REFERENCE_TTL if ttl > 0 else 1.0
        after = _prior_after()
        total = 0.65 + sum(after)
        return cls(0.65 / total, tuple(e * scale for e in _EDGES),
                   tuple(a / total for a in after), ttl, 240.0 * scale)

    @property
    def ping_every(self) -> float:
        """How often a visitor on the site renews (the snippet: a third of the
        reservation, at most a minute): quieter than that, it has left."""
        return min(self.ttl / 3, 60.0) if self.ttl > 0 else 60.0

    def after_cdf(self, delay: float) -> float:
        """Share of calls made after leaving, at most `delay` seconds after."""
        total = 0.0
        for lo, hi, share in zip(self.edges, self.edges[1:], self.after, strict=False):
            if delay <= lo:
                break
            total += share * (min(delay, hi) - lo) / (hi - lo)
        return total

    @property
    def horizon(self) -> float:
        """Delay after leaving beyond which nobody is expected to call."""
        return self.edges[-1]

    def bin(self, delay: float) -> int:
        """The bin of a delay after leaving; -1 outside them."""
        if delay < 0 or delay >= self.edges[-1]:
            return -1
        return bisect.bisect_right(self.edges, delay) - 1

    def density(self, delay: float) -> float:
        """Calls per second at `delay` seconds after leaving (a share of one caller)."""
        i = self.bin(delay)
        return 0.0 if i < 0 else self.after[i] / (self.edges[i + 1] - self.edges[i])

    def visiting(self, hold: Hold, now: float) -> bool:
        """Is the holder still on the site (active within the ping interval)?"""
        return now < hold.until and now - (hold.until - self.ttl) <= self.ping_every

    def rate(self, hold: Hold, now: float) -> float:
        """How fast the holder of `hold` calls the number at `now` (relative units)."""
        if hold.started_at > now:
            return 0.0
        if self.visiting(hold, now):
            return self.during / (self.mean_visit + self.ping_every)
        return self.density(now - (hold.until - self.ttl))


def candidates(holds: Sequence[Hold], now: float) -> list[Hold]:
    """The distinct holds of one number that began by `now`: the store may report a hold
    both as history and as current or last, and may keep its start to the whole second
    (Redis), so one session's holds starting within a second are one."""
    kept: list[Hold] = []
    for h in sorted(holds, key=lambda h: -h.until):
        if h.started_at > now:
            continue
        if not any(k.session_id == h.session_id and abs(k.started_at - h.started_at) < 1.0
                   for k in kept):
            kept.append(h)
    return kept


def posterior(model: DelayModel, holds: Sequence[Hold], now: float
              ) -> list[tuple[Hold, float]]:
    """Each candidate hold with its probability of being the caller (sums to 1, or
    an empty list when the model expects nobody to call)."""
    rated = [(h, model.rate(h, now)) for h in candidates(holds, now)]
    total = sum(r for _, r in rated)
    if total <= 0:
        return []
    return [(h, r / total) for h, r in rated if r > 0]


def confidence(model: DelayModel, chosen: Hold, holds: Sequence[Hold], now: float) -> float:
    """The probability that the holder of `chosen` made the call at `now`."""
    for h, p in posterior(model, [chosen, *holds], now):
        if h.session_id == chosen.session_id and abs(h.started_at - chosen.started_at) < 1.0:
            return round(p, 4)
    return 0.0


class DelayLearner:
    """A tracker's delay model, moved toward its own calls (online EM).

    Soft counts per bin start at the prior times `strength` (how many calls the prior
    weighs); every call adds its candidates' posterior shares at their delays.
    `observe_hold` keeps a running mean of how long visitors hold numbers.
    """

    def __init__(self, ttl: float, strength: float = 200.0) -> None:
        self._base = DelayModel.prior(ttl)
        self._during = self._base.during * strength
        self._after = [a * strength for a in self._base.after]
        self._visits = 0
        self._visit_sum = 0.0
        self._seen: dict[tuple[str, str, float], None] = {}  # holds counted (bounded)
        self._model = self._base
        self.calls = 0

    @property
    def model(self) -> DelayModel:
        return self._model

    def observe_holds(self, holds: Sequence[Hold], now: float) -> None:
        """Ended holds seen in a number's history (each counted once): the visits'
        length, for the rate of a visitor on the site."""
        ttl = self._base.ttl
        for h in holds:
            key = (h.number, h.session_id, h.started_at)
            if h.until <= now and key not in self._seen:
                self._seen[key] = None
                if len(self._seen) > 20_000:
                    del self._seen[next(iter(self._seen))]
                self._visits += 1
                self._visit_sum += max(0.0, h.until - ttl - h.started_at)
        self._refresh()

    def observe_record(self, kind: str, confidence: float, last_seen: float, now: float,
                       grace: float) -> None:
        """A stored call record, at a restart: the call to a pool number at `now`
        attributed `kind` with `confidence` to a visitor last active at `last_seen`
        (ignored unless dynamic or expired). The named visitor's share goes to its
        delay's bin as `observe_call` put it; the rest, which went to the number's
        earlier holders (their delays are not in the record), is spread over the delays
        longer than the named one's as the model expects them. A `none` call (nobody
        within the grace) spreads its whole weight beyond `reservation_ttl + grace`."""
        m = self._model
        rest = 1.0
        after = now - last_seen
        if kind in ("dynamic", "expired"):
            confidence = min(1.0, max(0.0, confidence))
            if kind == "dynamic" and after <= m.ping_every:
                self._during += confidence
                after = 0.0
            elif (i := m.bin(after)) >= 0:
                self._after[i] += confidence
            rest = 1.0 - confidence
        elif kind == "none":
            after = m.ttl + grace
        else:
            return
        weights = [share * min(1.0, max(0.0, (hi - after) / (hi - lo)))
                   for lo, hi, share in zip(m.edges, m.edges[1:], m.after, strict=False)]
        total = sum(weights)
        if total > 0 and rest > 0:
            for i, w in enumerate(weights):
                self._after[i] += rest * w / total
        self.calls += 1
        self._refresh()

    def observe_visits(self, visits: Iterable[tuple[float, float]]) -> None:
        """Stored visits (first request, last activity), at a restart: their length
        counts toward the mean visit."""
        for first_seen, last_seen in visits:
            self._visits += 1
            self._visit_sum += max(0.0, last_seen - first_seen)
        self._refresh()

    def observe_call(self, holds: Sequence[Hold], now: float) -> None:
        """A call to a pool number whose recent holders are `holds`."""
        post = posterior(self._model, holds, now)
        if not post:
            return
        m = self._model
        for h, p in post:
            if m.visiting(h, now):
                self._during += p
            else:
                i = m.bin(now - (h.until - m.ttl))
                if i >= 0:
                    self._after[i] += p
        self.calls += 1
        self._refresh()

    def _refresh(self) -> None:
        total = self._during + sum(self._after)
        mean_visit = (self._visit_sum / self._visits if self._visits >= 5
                      else self._base.mean_visit)
        self._model = DelayModel(self._during / total, self._base.edges,
                                 tuple(a / total for a in self._after), self._base.ttl,
                                 mean_visit)


class Learners:
    """One `DelayLearner` per tracker, made on first use (a reservation_ttl change
    starts a new one)."""

    def __init__(self) -> None:
        self._by_tracker: dict[str, DelayLearner] = {}
        self._ttl: dict[str, float] = {}

    def put(self, tracker: str, ttl: float, learner: DelayLearner) -> None:
        """Install a learner made elsewhere (rebuilt from the stored calls)."""
        self._by_tracker[tracker] = learner
        self._ttl[tracker] = ttl

    def get(self, tracker: str, ttl: float) -> DelayLearner:
        learner = self._by_tracker.get(tracker)
        if learner is None or self._ttl.get(tracker) != ttl:
            learner = self._by_tracker[tracker] = DelayLearner(ttl)
            self._ttl[tracker] = ttl
        return learner
