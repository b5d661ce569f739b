"""A simulated day of a site's visitors and callers, shared by the attribution replay
benchmark (through the daemon) and the unit tests (through the pure domain).

Visits follow a daily curve (quiet at night, peaks late morning and evening); each
lasts a log-normal time (median 3 min). 6% of visitors call: 65% during the visit, 25%
within 30 minutes of leaving, 10% 1-48 h later from the number they wrote down
(log-uniform: more of them within hours than a day later). Everything is in seconds of
the day and can be compressed by a factor (reservation and delays alike).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

DAY = 86400.0
# relative visits per hour of the day
HOURLY = (2, 1, 1, 1, 1, 2, 4, 7, 11, 14, 16, 17, 16, 15, 15, 14, 13, 12, 13, 15, 16, 13,
          8, 4)


@dataclass(frozen=True)
class Call:
    at: float  # seconds after the visitor's first request
    kind: str  # during | after | late


@dataclass(frozen=True)
class Visitor:
    index: int
    start: float  # seconds into the day
    length: float  # seconds from the first request to the last activity
    call: Call | None

    @property
    def end(self) -> float:
        return self.start + self.length


def make_day(visits: int = 5000, call_share: float = 0.06, seed: int = 1,
             during: float = 0.65, after: float = 0.25, late: float = 0.10,
             late_max_hours: float = 48.0, late_even: bool = False) -> list[Visitor]:
    """`late_even`: the late calls spread evenly over 1-48 h instead (more a day later
    than within hours), to check the estimate when the delay model's prior is wrong."""
    rnd = random.Random(seed)
    weights = [float(w) for w in HOURLY]
    out = []
    for i in range(visits):
        hour = rnd.choices(range(24), weights)[0]
        start = (hour + rnd.random()) * 3600.0
        length = min(rnd.lognormvariate(math.log(180.0), 0.9), 3600.0)
        call = None
        if rnd.random() < call_share:
            kind = rnd.choices(("during", "after", "late"), (during, after, late))[0]
            if kind == "during":
                at = rnd.uniform(0.0, length)
            elif kind == "after":
                at = length + rnd.uniform(0.0, 1800.0)
            else:
                spread = rnd.uniform(0.0, math.log(late_max_hours))
                hours = 1.0 + (late_max_hours - 1.0) * spread / math.log(late_max_hours) \
                    if late_even else math.exp(spread)
                at = length + 3600.0 * hours
            call = Call(at, kind)
        out.append(Visitor(i, start, length, call))
    out.sort(key=lambda v: v.start)
    return out


def compress(day: Sequence[Visitor], speed: float) -> list[Visitor]:
    """The day with every time divided by `speed` (as the daemon benchmark replays it)."""
    return [replace(v, start=v.start / speed, length=v.length / speed,
                    call=Call(v.call.at / speed, v.call.kind) if v.call else None)
            for v in day]
