"""The arithmetic of tests/bench/cpu_split.py's summary, the pacing it shares with
compare.py, and the switches of the daemon launcher it runs (tests/bench/benchkit/ablate.py)."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.bench.benchkit.daemon import paced
from tests.bench.cpu_split import Run, summary

ROOT = Path(__file__).resolve().parents[2]


def run(step: str, rnd: int, cpu: float, ok: int = 1000, retrans: int = 0) -> Run:
    # a 20 s window at 10 ms/s idle: 0.2 s of it is the baseline
    return Run(step, rnd, ok=ok, window=20.0, cpu=cpu + 0.2, idle_rate=0.01, retrans=retrans)


def test_net_cpu_is_the_window_minus_the_idle_baseline() -> None:
    r = run("sip", 1, 2.0)
    assert math.isclose(r.net, 2.0)
    assert math.isclose(r.ms_per_call, 2.0)
    assert math.isnan(Run("sip", 1).ms_per_call)  # no call succeeded


def test_each_part_is_the_difference_of_medians_its_spread_that_within_rounds() -> None:
    runs = [run("sip", 1, 2.0), run("sip", 2, 2.2), run("sip", 3, 2.1),
            run("records", 1, 3.0), run("records", 2, 3.0), run("records", 3, 3.4),
            run("visitors", 1, 5.0, retrans=500), run("visitors", 2, 5.0),
            run("visitors", 3, 5.0)]
    rows = {row[0]: row for row in summary(runs)}
    assert list(rows) == ["sip", "records", "visitors"]
    assert rows["sip"][2] == "2.100" and rows["sip"][6] == "2.100"
    assert rows["records"][6] == "+0.900"
    assert rows["records"][7] == "0.800-1.300"  # 3.0-2.0, 3.0-2.2, 3.4-2.1
    assert rows["visitors"][6] == "+2.000"
    assert rows["visitors"][5] == "0.00"  # the median of 0.5, 0, 0
    assert "with all between it and records" in rows["visitors"][8]


def test_paced_starts_each_task_once_and_stops_when_told() -> None:
    started: list[int] = []

    async def one(i: int) -> None:
        started.append(i)

    async def go(stop: threading.Event) -> int:
        return await paced(1000.0, 50, time.monotonic(), stop, one)

    assert asyncio.run(go(threading.Event())) == 50
    assert sorted(started) == list(range(50))
    stopped = threading.Event()
    stopped.set()
    assert asyncio.run(go(stopped)) == 0


def test_the_launcher_switches_records_and_shedding_off() -> None:
    code = """
import math
from calltrackd.overload import LoopLagMonitor
from calltrackd.recorder import Recorder
from tests.bench.benchkit import ablate
before = Recorder.call_started
ablate.records_off()
ablate.shedding_off()
assert Recorder.call_started is ablate._nothing and before is not ablate._nothing
assert Recorder.call_ended is ablate._count
m = LoopLagMonitor(interval=0.02)
assert m.high == math.inf and m.queue_high == math.inf and m.interval == 0.02
m.observe(10.0)
assert not m.overloaded
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
