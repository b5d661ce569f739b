"""`calltrackd` with parts switched off, for tests/bench/cpu_split.py.

    python -m tests.bench.benchkit.ablate [--no-records] [--no-shedding] [--profile FILE] \
        run --config FILE

The same daemon as `python -m calltrackd`, with the package unchanged: the options replace
methods on its classes before the daemon starts.

--no-records   the recorder's hooks for a call's start, answer and end only count the call:
               no attribution lookup, no CDR, no outbox row, no webhook. What is left is
               the signalling of the call's two legs (transport, transactions, dialogs,
               the B2BUA's state machine and routing) and the daemon's background work.
--no-shedding  the loop-lag monitor runs (its timer, its probes) but never says
               "overloaded": on a machine shared with other work the loop is descheduled
               for tens of milliseconds, which sheds calls at rates the daemon sustains,
               and a step with shed calls would not carry the same calls as the others.
--profile FILE cProfile with a CPU clock (time.process_time, so a loop waiting for packets
               counts nothing), on from SIGUSR1 to SIGUSR2, which writes FILE (pstats).
"""

from __future__ import annotations

import cProfile
import math
import signal
import sys
import time
from typing import Any

from calltrackd.b2bua.call import CallInfo
from calltrackd.cli import main
from calltrackd.overload import LoopLagMonitor
from calltrackd.recorder import Recorder


def _nothing(self: Recorder, call: CallInfo) -> None:
    return None


def _count(self: Recorder, call: CallInfo) -> None:
    # what call_ended does besides the record: the calls counter
    self.metrics.calls.labels(call.tracker.id, call.outcome or "failed").inc()


def records_off() -> None:
    Recorder.call_started = _nothing  # type: ignore[method-assign]
    Recorder.call_answered = _nothing  # type: ignore[method-assign]
    Recorder.call_ended = _count  # type: ignore[method-assign]


def shedding_off() -> None:
    init = LoopLagMonitor.__init__

    def never_overloaded(self: LoopLagMonitor, **kwargs: Any) -> None:
        init(self, **{**kwargs, "high": math.inf, "queue_high": math.inf})

    LoopLagMonitor.__init__ = never_overloaded  # type: ignore[method-assign]


def profile_on_signal(path: str) -> None:
    prof = cProfile.Profile(time.process_time)

    def on(_signum: int, _frame: object) -> None:
        prof.enable()

    def off(_signum: int, _frame: object) -> None:
        prof.disable()
        prof.dump_stats(path)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)


OPTIONS = {"--no-records": records_off, "--no-shedding": shedding_off}

if __name__ == "__main__":
    argv = sys.argv[1:]
    while argv and (argv[0] in OPTIONS or argv[0] == "--profile"):
        if argv[0] == "--profile":
            profile_on_signal(argv[1])
            del argv[:2]
        else:
            OPTIONS[argv.pop(0)]()
    sys.exit(main(argv))
