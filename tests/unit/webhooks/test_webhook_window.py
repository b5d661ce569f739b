"""The adaptive window alone, on a manual clock."""

from __future__ import annotations

from calltrackd.webhooks.window import AdaptiveWindow


def test_slow_start_doubles_per_round_trip_up_to_the_limit() -> None:
    w = AdaptiveWindow(initial=4, limit=32)
    for _ in range(4):  # one round trip: four acknowledgements, rows waiting
        w.acknowledged(0.2, waiting=True)
    assert w.size == 8
    for _ in range(100):
        w.acknowledged(0.2, waiting=True)
    assert w.size == 32  # never past the ceiling


def test_no_growth_without_waiting_rows_or_while_answers_slow_down() -> None:
    w = AdaptiveWindow(initial=4, limit=32)
    w.acknowledged(0.2, waiting=False)
    assert w.size == 4  # nobody waited for the slot
    w.acknowledged(0.2, waiting=True)
    w.acknowledged(1.0, waiting=True)  # five times the fastest: the receiver queues
    assert w.size == 5


def test_a_failure_halves_once_per_round_trip_then_growth_is_linear() -> None:
    w = AdaptiveWindow(initial=16, limit=32)
    w.failed(started=10.0, now=10.2)
    assert w.size == 8
    w.failed(started=10.1, now=10.3)  # sent before the cut: the same trouble
    assert w.size == 8
    w.failed(started=10.4, now=10.6)  # sent after it: halved again
    assert w.size == 4
    for _ in range(4):
        w.acknowledged(0.2, waiting=True)
    assert w.size == 4 and 4.9 < w.window < 5.0  # one per window of acknowledgements
    for _ in range(10):
        w.failed(started=100.0 + 10 * _, now=100.5 + 10 * _)
    assert w.size == 1  # never below one
