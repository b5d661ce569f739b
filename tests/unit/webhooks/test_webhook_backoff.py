from __future__ import annotations

import random

import pytest

from calltrackd.webhooks.backoff import (
    ExponentialJitterBackoff,
    RetryPolicy,
    is_success,
    parse_retry_after,
)


def test_wait_after_nth_failure_is_between_half_and_full_exponential_step() -> None:
    backoff = ExponentialJitterBackoff(base=5.0, cap=3600.0, rng=random.Random(1).random)
    for failures in range(1, 40):
        ceiling = min(3600.0, 5.0 * 2 ** (failures - 1))
        for _ in range(50):
            assert ceiling / 2 <= backoff.compute(failures) <= ceiling


def test_wait_grows_exponentially_until_the_cap() -> None:
    low = ExponentialJitterBackoff(base=5.0, cap=3600.0, rng=lambda: 0.0)
    high = ExponentialJitterBackoff(base=5.0, cap=3600.0, rng=lambda: 1.0)
    assert [low.compute(n) for n in range(1, 5)] == [2.5, 5.0, 10.0, 20.0]
    assert [high.compute(n) for n in range(1, 5)] == [5.0, 10.0, 20.0, 40.0]
    assert high.compute(11) == 3600.0
    assert high.compute(12) == 3600.0
    assert low.compute(12) == 1800.0


def test_huge_failure_counts_stay_at_the_cap() -> None:
    backoff = ExponentialJitterBackoff(base=5.0, cap=3600.0, rng=lambda: 1.0)
    assert backoff.compute(10_000) == 3600.0
    assert backoff.compute(0) == 5.0  # treated as the first failure


def test_backoff_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        ExponentialJitterBackoff(base=0)
    with pytest.raises(ValueError):
        ExponentialJitterBackoff(base=10, cap=5)


def test_only_2xx_is_success() -> None:
    assert is_success(200) and is_success(204) and is_success(299)
    assert not any(is_success(s) for s in (100, 301, 302, 400, 404, 410, 429, 500, 503))


def test_policy_retries_for_at_least_a_day_then_gives_up() -> None:
    policy = RetryPolicy(backoff=ExponentialJitterBackoff(rng=lambda: 1.0))
    created = 1000.0
    assert policy.next_attempt_at(created_at=created, attempts=1, now=created + 1) == created + 6
    almost = created + 86399.0
    assert policy.next_attempt_at(created_at=created, attempts=30, now=almost) == almost + 3600
    assert policy.next_attempt_at(created_at=created, attempts=31, now=created + 86400) is None


def test_retry_schedule_spans_24h_with_a_reasonable_number_of_attempts() -> None:
    policy = RetryPolicy(backoff=ExponentialJitterBackoff(rng=random.Random(7).random))
    now, attempts = 0.0, 0
    while True:
        attempts += 1
        nxt = policy.next_attempt_at(created_at=0.0, attempts=attempts, now=now)
        if nxt is None:
            break
        now = nxt
    assert now >= 86400
    assert 20 <= attempts <= 60


def test_retry_after_is_honoured_but_bounded() -> None:
    policy = RetryPolicy(backoff=ExponentialJitterBackoff(rng=lambda: 1.0), max_retry_after=600)
    assert policy.next_attempt_at(created_at=0, attempts=1, now=0, retry_after=120) == 120
    assert policy.next_attempt_at(created_at=0, attempts=1, now=0, retry_after=1) == 5
    assert policy.next_attempt_at(created_at=0, attempts=1, now=0, retry_after=1e9) == 600


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now) == 120.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
