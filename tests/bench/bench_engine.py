"""The call engine's in-process CPU cost: answered calls (INVITE, 180, 200, ACK, BYE)
through the real engine, calls and transaction layers on the in-memory link of the unit
tests (tests/unit/b2bua/net.py: a fake link, a manual clock, no sockets, no asyncio), with
the daemon's logging (JSON lines, here to /dev/null). It adds up the thread's CPU time in
`engine.handle`, the engine's part of every SIP input (the stack's parsing and the peers
are not counted; the clock is read twice per input, a system call of about 1 µs, so some
6 µs of a call's figure are the clock's), and reports µs per call, best and median of
the rounds:

    .venv/bin/python -m tests.bench.bench_engine                  # 5 rounds of 2,000 calls
    .venv/bin/python -m tests.bench.bench_engine --log warning --calls 5000 --profile

On a loaded machine CPU time is noisy (other processes share the caches and the cores).
`--callgrind` counts instructions instead, which other load does not change: under
valgrind, only inside `engine.handle` (run through functools.reduce, which nothing else
on the way uses, so callgrind can switch counting on and off around it):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        --toggle-collect=functools_reduce --collect-atstart=no \
        .venv/bin/python -m tests.bench.bench_engine --callgrind --warmup 20 --rounds 1 \
        --calls 300    # "Collected" / 320 (the warm-up counts too): instructions per call

Whether the SIP core and the call engine ran compiled is printed first (build them with
scripts/build_native.py; CALLTRACKD_PURE_PYTHON=1 runs the sources).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable

from calltrackd import b2bua, sip
from calltrackd.config import LogSettings
from calltrackd.logging import configure_logging
from calltrackd.sip.endpoint import Event
from tests.unit.b2bua.net import Net


def timed_engine(net: Net, callgrind: bool = False) -> list[int]:
    """Wrap the engine's SIP input so the time spent in it adds up (ns) in the list;
    `callgrind`: called through functools.reduce (see the module's docstring)."""
    spent = [0]
    handle = net.engine.handle
    clock = time.thread_time_ns  # CPU time: on a loaded machine, not the waits for a core

    def through_reduce(_: None, events: list[Event]) -> None:
        handle(events)

    def timed(events: list[Event]) -> None:
        t = clock()
        if callgrind:
            functools.reduce(through_reduce, (events,), None)
        else:
            handle(events)
        spent[0] += clock() - t

    net.engine.handle = timed  # type: ignore[method-assign]
    return spent


def one_call(net: Net) -> None:
    carrier, pbx = net.carrier, net.pbx_a
    carrier.invite()
    pbx.respond(180)
    pbx.respond(200)
    carrier.send("BYE")
    for peer in (carrier, pbx):  # what the peers saw: not kept across calls
        peer.requests.clear()
        peer.responses.clear()
        peer.acks.clear()


def round_of(net: Net, spent: list[int], calls: int,
             profile: cProfile.Profile | None) -> float:
    """µs of engine.handle per call over `calls` answered calls."""
    spent[0] = 0
    if profile is not None:
        profile.enable()
    for i in range(calls):
        one_call(net)
        if i % 200 == 199:  # let the transactions and the ended calls expire
            net.advance(40.0)
    if profile is not None:
        profile.disable()
    assert net.engine.active_calls == 0
    return spent[0] / 1000 / calls


def run(calls: int, rounds: int, profile: bool, warmup: int = 200, callgrind: bool = False,
        out: Callable[[str], None] = print) -> list[float]:
    net = Net()
    spent = timed_engine(net, callgrind)
    for _ in range(warmup):  # caches, the allocator, the first calls' imports
        one_call(net)
    net.advance(40.0)
    prof = cProfile.Profile() if profile else None
    figures = []
    gc.collect()
    for _ in range(rounds):
        figures.append(round_of(net, spent, calls, prof))
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
        out(text.getvalue())
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="answered calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--log", choices=("info", "warning"), default="info",
                    help="the daemon's log level (info: a line per call start and end)")
    ap.add_argument("--warmup", type=int, default=200, help="calls before the rounds")
    ap.add_argument("--callgrind", action="store_true",
                    help="engine.handle through functools.reduce, for valgrind (above)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the rounds (slower): the top functions by own time")
    args = ap.parse_args()
    print(f"SIP core: {sip.NATIVE}; call engine: {b2bua.NATIVE}; log level {args.log}")
    devnull = open("/dev/null", "w")  # the loggers keep it to the end
    stderr, sys.stderr = sys.stderr, devnull
    try:
        configure_logging(LogSettings(level=args.log))
    finally:
        sys.stderr = stderr
    figures = run(args.calls, args.rounds, args.profile, args.warmup, args.callgrind)
    print("µs of engine.handle per call, per round:", " ".join(f"{f:.1f}" for f in figures))
    print(f"best {min(figures):.1f} µs, median {statistics.median(figures):.1f} µs "
          f"({args.calls} calls x {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
