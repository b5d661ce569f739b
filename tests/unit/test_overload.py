"""The load shedder's decision: on above the high lag, off again only below the low one."""

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
