"""Pools that match channels and source/medium patterns; `check-config` refuses a pattern
that can never match; a given number handed back to a returning visitor."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from calltrackd.config import ConfigError, parse_config
from calltrackd.tracking.allocator import Allocator, match_pool, pattern_problem
from calltrackd.tracking.model import Pool

POOLS = (
    Pool("google-organic", ("google/organic",), ("+1",)),
    Pool("paid", ("paid",), ("+2",)),
    Pool("organic", ("organic",), ("+3",)),
    Pool("cpm", ("*/cpm", "*/display"), ("+4",)),
    Pool("social", ("social", "email"), ("+5",)),
    Pool("direct", ("direct",), ("+6",)),
    Pool("rest", ("*/*",), ("+7",)),
)


@pytest.mark.parametrize(("source", "medium", "pool"), [
    ("google", "organic", "google-organic"),
    ("google", "cpc", "paid"),
    ("yandex", "cpc", "paid"),
    ("bing", "paid_search", "paid"),
    ("yandex", "organic", "organic"),
    ("vk.com", "social", "social"),
    ("mailchimp", "email", "social"),
    (None, None, "direct"),
    ("(direct)", "(none)", "direct"),
    ("forum.example.org", "referral", "rest"),
    ("partner", "qr", "rest"),
])  # fmt: skip
def test_pools_match_channels_and_patterns(source: str | None, medium: str | None,
                                           pool: str) -> None:
    found = match_pool(POOLS, source, medium)
    assert found is not None and found.name == pool


def test_star_medium_matches_any_source_with_that_medium() -> None:
    pools = (Pool("cpm", ("*/cpm",), ("+1",)), Pool("paid", ("paid",), ("+2",)))
    assert match_pool(pools, "mytarget", "cpm") is pools[0]  # first in config order
    assert match_pool(pools, "google", "cpc") is pools[1]
    assert match_pool(pools, "google", "organic") is None


def test_the_classified_channel_wins_over_the_one_the_medium_gives() -> None:
    pools = (Pool("social", ("social",), ("+1",)),)
    assert match_pool(pools, "facebook.com", "cpc", channel="social") is pools[0]
    assert match_pool(pools, "facebook.com", "cpc") is None


@pytest.mark.parametrize("pattern", ["*", "paid", "Organic", "google/cpc", "google/*",
                                     "*/cpc", "*/*", "(direct)/(none)", "direct"])
def test_patterns_that_can_match(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["google", "cpc", "google/", "/cpc", "a/b/c", ""])
def test_patterns_that_never_match_are_named(pattern: str) -> None:
    assert pattern_problem(pattern) is not None


def test_check_config_refuses_a_pattern_that_can_never_match_naming_the_key() -> None:
    text = """
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070"]
returning_window = "7d"
  [[trackers.pools]]
  name = "seo"
  sources = ["organic", "google"]
  numbers = ["+74990000001"]
"""
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(text))
    (problem,) = exc.value.problems
    assert problem.startswith("trackers[0].pools[0].sources[1]: 'google' can never match")
    assert '"google/*"' in problem
    ok = parse_config(tomllib.loads(text.replace('"organic", "google"', '"organic"')))
    assert ok.trackers[0].pools[0].sources == ("organic",)
    assert ok.trackers[0].returning_window == 7 * 86400


# --- a given number: the one a returning visitor held last -----------------------------

KEY = ("acme", "web")


def allocator(cooldown: float = 0.0) -> Allocator:
    a = Allocator()
    a.set_pool(KEY, ["+1", "+2", "+3"], cooldown)
    return a


def test_a_free_number_is_given_to_whoever_asks_for_it() -> None:
    a = allocator()
    assert a.allocate(KEY, "s_old", 0.0, 10.0).number == "+1"  # type: ignore[union-attr]
    hold = a.take(KEY, "+1", "s_new", 20.0, 10.0)  # the old hold lapsed at 10
    assert hold is not None and (hold.number, hold.session_id) == ("+1", "s_new")
    # the next visitor gets the number idle longest, not the one just taken
    assert a.allocate(KEY, "s_other", 21.0, 10.0).number == "+2"  # type: ignore[union-attr]


def test_a_number_held_by_someone_else_is_not_given() -> None:
    a = allocator()
    a.allocate(KEY, "s_someone", 0.0, 100.0)
    assert a.take(KEY, "+1", "s_new", 10.0, 10.0) is None
    assert a.take(KEY, "+9", "s_new", 10.0, 10.0) is None  # not the pool's
    assert a.take(("acme", "other"), "+1", "s_new", 10.0, 10.0) is None


def test_the_same_visitors_earlier_session_hands_its_number_over() -> None:
    a = allocator()
    a.allocate(KEY, "s_first", 0.0, 100.0)
    hold = a.take(KEY, "+1", "s_second", 10.0, 100.0, previous="s_first")
    assert hold is not None and hold.session_id == "s_second"
    current, last = a.holders("+1", 10.0)
    assert current is not None and current.session_id == "s_second"
    assert last is not None and (last.session_id, last.until) == ("s_first", 10.0)
    assert a.renew("s_first", 11.0, 100.0) is None  # the old session holds nothing now
    assert a.counts(KEY, 11.0).reserved == 1


def test_cooling_number_goes_back_only_to_its_last_holder() -> None:
    a = allocator(cooldown=60.0)
    a.allocate(KEY, "s_first", 0.0, 10.0)  # lapses at 10, cools until 70
    assert a.take(KEY, "+1", "s_stranger", 20.0, 10.0) is None
    hold = a.take(KEY, "+1", "s_again", 20.0, 10.0, previous="s_first")
    assert hold is not None and hold.number == "+1"


def test_check_config_reads_a_trackers_source_rules_and_names_the_key(tmp_path: Path) -> None:
    base = tmp_path
    (base / "good.toml").write_text('search = [{ source = "kagi", domains = ["kagi.com"] }]\n')
    (base / "bad.toml").write_text('click_ids = [{ param = "x" }]\n')
    text = """
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070"]
source_rules = "{rules}"
"""
    ok = parse_config(tomllib.loads(text.replace("{rules}", "good.toml")),
                      source=str(base / "calltrackd.toml"))
    assert ok.trackers[0].source_rules == str(base / "good.toml")  # next to the config
    for name, message in (("bad.toml", "click_ids[0]: needs param, source and medium"),
                          ("missing.toml", "cannot read")):
        with pytest.raises(ConfigError) as exc:
            parse_config(tomllib.loads(text.replace("{rules}", name)),
                         source=str(base / "calltrackd.toml"))
        (problem,) = exc.value.problems
        assert problem.startswith("trackers[0].source_rules: ") and message in problem, problem
