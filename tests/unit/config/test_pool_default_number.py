"""`[[trackers.pools]] default_number`: the pool's own overflow number, checked like every
other number of the configuration."""

from __future__ import annotations

import tomllib

import pytest
from test_check_config import GOOD

from calltrackd.config import ConfigError, parse_config


def with_pool_default(number: str, extra: str = "") -> str:
    return GOOD.replace('  numbers = ["+74990000001", "+7 499 000-00-02"]\n',
                        f'  numbers = ["+74990000001", "+7 499 000-00-02"]\n'
                        f'  default_number = "{number}"\n') + extra


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(text))
    return exc.value.problems


def test_a_pools_default_number_is_read_and_routes_to_its_tracker() -> None:
    s = parse_config(tomllib.loads(with_pool_default("+7 499 000-00-09")))
    assert s.trackers[0].pools[0].default_number == "+74990000009"
    assert s.tracker_by_did("+74990000009") is s.trackers[0]


def test_a_pools_default_number_must_be_e164() -> None:
    assert problems(with_pool_default("84990000009")) == [
        "trackers[0].pools[0].default_number: '84990000009' is not an E.164 number"
        " (such as \"+74991234567\")"]


@pytest.mark.parametrize(("number", "role"), [
    ("+74990000001", "a pool number"),
    ("+74990000100", "a static number"),
    ("+74990000000", "the tracker's default_number"),
])
def test_a_pools_default_number_cannot_play_another_role(number: str, role: str) -> None:
    assert problems(with_pool_default(number)) == [
        f"trackers[0].pools[0].default_number: {number} is already {role};"
        " a pool's default number must be its own"]


def test_a_pools_default_number_is_unique_across_trackers() -> None:
    other = """
[[trackers]]
id = "other"
public_key = "pk_other"
default_number = "+74990000009"
forward = ["sip:127.0.0.1:5070"]
"""
    found = problems(with_pool_default("+74990000009", other))
    assert len(found) == 1 and "+74990000009 is configured twice" in found[0]
