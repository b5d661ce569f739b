"""The load shedder's decision: on above the high lag, off again only below the low one; and
the loop-lag figures it keeps for the metrics (the longest tick lag, the histogram)."""

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from calltrackd.metrics import Metrics
from calltrackd.overload import LoopLagMonitor


def test_shedding_turns_on_with_lag_and_off_with_hysteresis() -> None:
    m = LoopLagMonitor(high=0.015, low=0.005)
    for _ in range(20):
        m.observe(0.001)
    assert not m.overloaded
    for _ in range(5):
        m.observe(0.050)  # the loop runs 50 ms late
    assert m.overloaded
    for _ in range(3):
        m.observe(0.008)  # better, but not below the low mark yet
    assert m.overloaded
    for _ in range(20):
        m.observe(0.0)
    assert not m.overloaded


def test_one_late_tick_does_not_shed() -> None:
    m = LoopLagMonitor(high=0.015, low=0.005)
    m.observe(0.090)  # a single 90 ms hiccup (a full GC pass, say)
    assert not m.overloaded
    m.observe(0.0)
    m.observe(0.0)
    assert not m.overloaded


def test_a_saturated_queue_sheds_after_the_hold_and_recovers() -> None:
    m = LoopLagMonitor(queue_high=0.05, queue_low=0.01, queue_hold=0.1)
    m.observe_queue(0.2, now=0.0)  # datagrams wait 200 ms before the loop reads them
    assert not m.overloaded  # not yet: it may be one stall the loop catches up on
    m.observe_queue(0.21, now=0.06)
    assert not m.overloaded
    m.observe_queue(0.25, now=0.11)
    assert m.overloaded
    m.observe_queue(0.03, now=0.5)  # draining, but not under the low mark
    assert m.overloaded
    m.observe_queue(0.002, now=0.6)
    assert not m.overloaded


def test_one_stall_in_the_queue_does_not_shed() -> None:
    m = LoopLagMonitor(queue_high=0.05, queue_low=0.01, queue_hold=0.1)
    for i, delay in enumerate([0.001, 0.03, 0.06, 0.09, 0.002, 0.001]):
        m.observe_queue(delay, now=i * 0.02)
    assert not m.overloaded


async def test_a_100_ms_stall_shows_in_the_longest_lag_and_the_histogram() -> None:
    """The loop blocked for 100 ms: the tick due meanwhile runs at least 90 ms late (it was
    due at most 10 ms after the block began), which the smoothed lag hides and the metrics
    show, as they are scraped."""
    monitor = LoopLagMonitor()
    metrics = Metrics()
    metrics.watch_loop(monitor)
    monitor.start()
    try:
        await asyncio.sleep(0.05)  # a few ticks on time (or late, on a busy machine)
        time.sleep(0.1)  # noqa: ASYNC251 - the stall itself: nothing else runs
        await asyncio.sleep(0.03)  # the overdue tick runs before this sleep ends
    finally:
        monitor.stop()
    got = {s.name + str(sorted(s.labels.items())): s.value for f in
           text_string_to_metric_families(metrics.render().decode()) for s in f.samples
           if s.name.startswith("calltrackd_loop_")}
    longest = got["calltrackd_loop_lag_max_seconds[]"]
    assert longest >= 0.089, got
    assert got["calltrackd_loop_lag_seconds[]"] < longest  # smoothed: one stall is diluted
    ticks = got["calltrackd_loop_tick_lag_seconds_count[]"]
    assert ticks == sum(monitor.lag_counts) >= 2
    # at least one tick above 50 ms: the stall's
    assert got["calltrackd_loop_tick_lag_seconds_bucket[('le', '0.05')]"] < ticks
    assert got["calltrackd_loop_tick_lag_seconds_sum[]"] >= longest


def test_the_longest_lag_is_the_last_minutes() -> None:
    now = [1000.0]
    m = LoopLagMonitor(clock=lambda: now[0])
    m.record(0.2, 1000.0)  # a stall
    for t in range(1, 100):  # then ticks on time, for 99 s
        now[0] = 1000.0 + t
        m.record(0.001, now[0])
        if t <= 50:
            assert m.max_lag() == 0.2  # seen by every scrape for 50 s at least
    assert m.max_lag() == 0.001  # a minute on, forgotten
    m.record(0.05, now[0])
    assert m.max_lag() == 0.05
