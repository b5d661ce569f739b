"""The simulated day (`day.py`) through the pure domain: the allocator, the holder
history, attribution with confidence and the tracker's delay learner, as the service
runs them, with no daemon. Used by the unit tests (fast) and to choose the default
attribution_grace:

    .venv/bin/python -m tests.bench.replay_pure --sizes 50,100,150,200,300 --grace 30m,24h

Visitors ping as the snippet does, every third of the reservation but at least once a
minute (the delay model's `ping_every`). `--speed 360` compresses the day as the
daemon benchmark does (tests/bench/attribution_replay.py: reservation 1 s, pings every
third of it, so no minute cap): the same replay in process.
"""

from __future__ import annotations

import argparse
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from calltrackd.config import parse_duration
from calltrackd.store.memory import HoldHistory
from calltrackd.tracking.allocator import Allocator
from calltrackd.tracking.attribution import attribute
from calltrackd.tracking.confidence import DelayLearner, DelayModel
from calltrackd.tracking.model import ForwardTarget, Pool, Tracker, VisitorSession
from calltrackd.tracking.simulator import Rule, SimVisit, recommend

from .day import Visitor, compress, make_day


@dataclass
class Outcome:
    """Per call: (kind of call, attribution kind, confidence, right?, expired age)."""

    calls: list[tuple[str, str, float, bool, float | None]] = field(default_factory=list)
    visits: list[SimVisit] = field(default_factory=list)
    learner: DelayLearner | None = None

    @property
    def accuracy(self) -> float:
        return sum(c[3] for c in self.calls) / len(self.calls)

    @property
    def estimated(self) -> float:
        return sum(c[2] for c in self.calls) / len(self.calls)

    def calibration(self, threshold: float = 0.9) -> tuple[int, int]:
        """(calls with confidence >= threshold, how many of them were right)."""
        sure = [c for c in self.calls if c[2] >= threshold]
        return len(sure), sum(c[3] for c in sure)


def tracker(size: int, ttl: float, grace: float) -> Tracker:
    numbers = tuple(f"+7499{i:07d}" for i in range(1, size + 1))
    return Tracker("bench", "pk_bench", "+74990000000", (ForwardTarget("sip:127.0.0.1"),),
                   reservation_ttl=ttl, attribution_grace=grace,
                   pools=(Pool("web", ("*",), numbers),))


def replay(day: Sequence[Visitor], size: int, ttl: float = 360.0, grace: float = 1800.0,
           days_after: float = 2.0, speed: float = 1.0) -> Outcome:
    """The day at `size` numbers; `speed` > 1 compresses it (the day, the reservation,
    the grace and every delay divided by it)."""
    if speed != 1.0:
        day, ttl, grace = compress(day, speed), ttl / speed, grace / speed
    t = tracker(size, ttl, grace)
    alloc = Allocator()
    alloc.set_pool(("bench", "web"), t.pools[0].numbers, t.cooldown)
    hist = HoldHistory()
    learner = DelayLearner(ttl)
    sessions = {f"s_{v.index}": VisitorSession(f"s_{v.index}", "bench") for v in day}
    shown: dict[int, str] = {}
    out = Outcome(learner=learner)
    every = DelayModel.prior(ttl).ping_every
    events: list[tuple[float, int, str, int]] = []
    for v in day:
        pings = int(v.length // every)
        for k in range(pings + 1):
            events.append((v.start + k * every, v.index, "ask", k))
        out.visits.append(SimVisit(v.start, v.start + pings * every))
        if v.call is not None and v.call.at < 86400.0 * (1 + days_after) / speed:
            events.append((v.start + v.call.at, v.index, "call", 0))
    heapq.heapify(events)
    by_index = {v.index: v for v in day}
    while events:
        now, i, what, _ = heapq.heappop(events)
        sid = f"s_{i}"
        if what == "ask":
            hold = alloc.renew(sid, now, ttl) or alloc.allocate(("bench", "web"), sid, now, ttl)
            hist.note(hold)
            shown[i] = hold.number if hold else t.default_number
            continue
        did = shown[i]
        current, last = alloc.holders(did, now)
        history = hist.of(did, now)
        att, _ = attribute(did, "+79160000000", now, t, current, last, sessions, False,
                           history, learner.model)
        holds = [h for h in (current, last, *history) if h is not None]
        if holds:
            learner.observe_holds(holds, now)
            learner.observe_call(holds, now)
        right = att.session is not None and att.session.id == sid
        age = None
        if att.kind == "expired" and last is not None:
            age = now - max(h.until for h in (current, last) if h is not None)
        call = by_index[i].call
        assert call is not None
        out.calls.append((call.kind, att.kind, att.confidence or 0.0, right, age))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="50,100,150,200,250,300")
    ap.add_argument("--grace", default="30m,24h")
    ap.add_argument("--visits", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--speed", type=float, default=1.0,
                    help="compress the day as the daemon benchmark does (360)")
    args = ap.parse_args(argv)
    day = make_day(args.visits, seed=args.seed)
    for g in args.grace.split(","):
        grace = parse_duration(g)
        for size in map(int, args.sizes.split(",")):
            o = replay(day, size, grace=grace, speed=args.speed)
            assert o.learner is not None
            sizing = recommend(o.visits, Rule(360.0 / args.speed, 0.0, grace / args.speed),
                               o.learner.model, size)
            at = {p.size: p.estimated_accuracy for p in sizing.curve}
            sure, right = o.calibration()
            exp = [c for c in o.calls if c[1] == "expired" and c[4] is not None]
            young = [c for c in exp if c[4] is not None and c[4] <= 1800 / args.speed]
            old = [c for c in exp if c[4] is not None and c[4] > 1800 / args.speed]
            print(f"grace {g:>4} size {size:>4}: calls {len(o.calls)} true {o.accuracy:.3f}"
                  f" estimated {o.estimated:.3f} simulated {at.get(size, float('nan')):.3f}"
                  f" | conf>=0.9: {right}/{sure}"
                  f" | expired <=30m {sum(c[3] for c in young)} right/"
                  f"{len(young) - sum(c[3] for c in young)} wrong,"
                  f" older {sum(c[3] for c in old)}/{len(old) - sum(c[3] for c in old)}"
                  f" | recommended {sizing.recommended_size}"
                  f" (limit {sizing.attainable_accuracy:.3f})")


if __name__ == "__main__":
    main()
