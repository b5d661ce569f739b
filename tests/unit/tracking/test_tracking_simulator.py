"""The pool simulator: a pool's visits replayed at other sizes (pure, synthetic days)."""

from __future__ import annotations

import pytest

from calltrackd.tracking.confidence import DelayModel
from calltrackd.tracking.simulator import Rule, SimVisit, accuracy, recommend

RULE = Rule(ttl=360.0, cooldown=0.0, grace=1800.0)
MODEL = DelayModel.prior(360.0)


def steady(n: int, every: float, length: float) -> list[SimVisit]:
    return [SimVisit(i * every, i * every + length) for i in range(n)]


def test_an_unlimited_pool_loses_only_the_calls_after_the_grace() -> None:
    limit = accuracy(steady(100, 60.0, 120.0), None, RULE, MODEL)
    assert limit == pytest.approx(MODEL.during + MODEL.after_cdf(360.0 + 1800.0))


def test_a_pool_that_rests_its_numbers_longer_than_the_grace_reaches_the_limit() -> None:
    # a visit a minute, each holding a number 2 + 6 minutes: 40 numbers rest > 30 min
    visits = steady(500, 60.0, 120.0)
    assert accuracy(visits, 40, RULE, MODEL) == pytest.approx(
        accuracy(visits, None, RULE, MODEL))


def test_accuracy_grows_with_the_pool_and_a_short_pool_turns_visitors_away() -> None:
    visits = steady(500, 60.0, 120.0)
    figures = [accuracy(visits, n, RULE, MODEL) for n in (2, 5, 9, 20, 40)]
    assert figures == sorted(figures)
    # 9 numbers serve everyone (8 minutes a hold, one a minute) but reuse at once:
    # only calls while the number is held are right
    assert figures[2] == pytest.approx(MODEL.during + MODEL.after_cdf(360.0 + 60.0), abs=0.02)
    assert figures[0] < 0.3  # most visitors see the default number


def test_recommendation_is_the_smallest_pool_within_3_percent_of_unlimited() -> None:
    visits = steady(500, 60.0, 120.0)
    sizing = recommend(visits, RULE, MODEL, current=10)
    best = sizing.recommended_size
    target = 0.97 * sizing.attainable_accuracy
    assert accuracy(visits, best, RULE, MODEL) >= target
    assert accuracy(visits, best - 1, RULE, MODEL) < target
    sizes = [p.size for p in sizing.curve]
    assert 10 in sizes and best in sizes and sizes == sorted(sizes)


def test_a_pool_without_visits_needs_no_numbers() -> None:
    assert recommend([], RULE, MODEL, current=5).recommended_size == 0


def test_a_longer_grace_asks_for_a_bigger_pool() -> None:
    visits = steady(2000, 30.0, 120.0)
    short = recommend(visits, RULE, MODEL, current=10).recommended_size
    long = recommend(visits, Rule(360.0, 0.0, 4 * 3600.0), MODEL, current=10).recommended_size
    assert long > short
