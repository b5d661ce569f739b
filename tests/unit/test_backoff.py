"""The daemon's one backoff (calltrackd/backoff.py): doubling from `base` up to `cap`,
with equal jitter when asked."""

from __future__ import annotations

import random

import pytest

from calltrackd.backoff import Backoff
from calltrackd.webhooks.backoff import ExponentialJitterBackoff


def test_without_jitter_the_wait_doubles_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 30.0)
    assert [backoff.compute(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.compute(0) == 0.5  # "no failure yet" waits as the first does


def test_with_jitter_the_wait_is_in_the_upper_half() -> None:
    backoff = Backoff(5.0, 3600.0, jitter=True, rng=random.Random(3).random)
    for n in range(1, 20):
        assert backoff.ceiling(n) / 2 <= backoff.compute(n) <= backoff.ceiling(n)


def test_a_long_outage_does_not_overflow() -> None:
    assert Backoff(1.0, 60.0).compute(10**6) == 60.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (10.0, 5.0)])
def test_a_base_or_cap_that_makes_no_sense_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base, cap)


def test_the_webhook_backoff_is_the_same_class_with_its_defaults() -> None:
    webhook = ExponentialJitterBackoff(rng=lambda: 1.0)
    assert isinstance(webhook, Backoff) and webhook.jitter
    assert (webhook.compute(1), webhook.compute(100)) == (5.0, 3600.0)
