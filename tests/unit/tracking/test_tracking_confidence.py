"""Attribution confidence on a simulated day (tests/bench/day.py) replayed through the
pure domain: calibrated, and its mean close to the true accuracy."""

from __future__ import annotations

import pytest

from calltrackd.tracking.confidence import DelayLearner, DelayModel, posterior
from calltrackd.tracking.model import Hold
from calltrackd.tracking.simulator import Rule, recommend
from tests.bench.day import make_day
from tests.bench.replay_pure import Outcome, replay

N = "+74990000001"


def hold(session: str, start: float, until: float) -> Hold:
    return Hold(N, session, "t", "web", start, until)


@pytest.fixture(scope="module")
def day_at() -> dict[int, Outcome]:
    day = make_day(5000, seed=1)
    return {size: replay(day, size) for size in (80, 160, 320)}


def test_calls_given_confidence_090_or_more_are_right_at_least_90_percent(
        day_at: dict[int, Outcome]) -> None:
    for size, outcome in day_at.items():
        sure, right = outcome.calibration(0.9)
        assert sure > 20 and right / sure >= 0.9, (size, sure, right)


def test_mean_confidence_is_within_3_points_of_the_true_accuracy(
        day_at: dict[int, Outcome]) -> None:
    for size, outcome in day_at.items():
        assert abs(outcome.estimated - outcome.accuracy) <= 0.03, (
            size, outcome.estimated, outcome.accuracy)


def test_the_simulator_agrees_with_the_replayed_pool(day_at: dict[int, Outcome]) -> None:
    for size, outcome in day_at.items():
        assert outcome.learner is not None
        sizing = recommend(outcome.visits, Rule(360.0, 0.0, 1800.0), outcome.learner.model,
                           size)
        simulated = {p.size: p.estimated_accuracy for p in sizing.curve}[size]
        assert abs(simulated - outcome.accuracy) <= 0.04, (size, simulated, outcome.accuracy)


def test_a_visitor_on_the_site_outweighs_one_who_left_hours_ago() -> None:
    m = DelayModel.prior(360.0)
    now = 10 * 3600.0
    here = hold("s_here", now - 100, now + 350)  # pinged 10 s ago
    gone = hold("s_gone", 0.0, 3 * 3600.0)
    shares = dict((h.session_id, p) for h, p in posterior(m, [here, gone], now))
    assert shares["s_here"] > 0.99


def test_the_learner_moves_toward_the_tracker_s_own_delays() -> None:
    learner = DelayLearner(360.0, strength=10)
    before = learner.model.after_cdf(3600.0)
    for i in range(50):  # every call comes from the one visitor who left 20 minutes ago
        t = 100_000.0 * (i + 1)
        learner.observe_call([hold(f"s_{i}", t - 2000, t - 1200 + 360)], t)
    assert learner.model.after_cdf(3600.0) > before + 0.5
