"""The rule-of-thumb pool size (a pool without visits to replay): peak demand + 20%."""

from calltrackd.store.base import PoolStats
from calltrackd.tracking.stats import peak_rule_size as recommended_size


def pool(size: int, peak: int, shortfall: int) -> PoolStats:
    return PoolStats("acme", "web", size, size - peak, peak, 0, peak, peak, shortfall)


def test_an_idle_pool_is_told_to_shrink_to_its_peak_plus_20_percent() -> None:
    assert recommended_size(pool(100, 10, 0), visitors=40, dynamic=40) == 12


def test_an_exact_figure_is_not_rounded_up() -> None:
    assert recommended_size(pool(10, 5, 0), visitors=9, dynamic=9) == 6


def test_a_pool_that_ran_short_is_sized_for_the_visitors_it_turned_away() -> None:
    # served half of its visitors at a peak of 10: demand about 20, +20%
    assert recommended_size(pool(10, 10, 30), visitors=100, dynamic=50) == 24


def test_a_short_pool_without_visitor_figures_grows_by_20_percent() -> None:
    assert recommended_size(pool(10, 10, 3), visitors=0, dynamic=0) == 12


def test_a_pool_nobody_used_needs_no_numbers() -> None:
    assert recommended_size(pool(5, 0, 0), visitors=0, dynamic=0) == 0
