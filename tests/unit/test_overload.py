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
