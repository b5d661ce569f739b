"""The figures of /v1/stats computed from the store's rows (calltrackd/tracking/stats.py,
pure): totals and sources, coverage, the two accuracies, a pool's figures, the replays'
cache and the INVITEs shed."""

from __future__ import annotations

from calltrackd.store.base import AttributionStats, CallStats, PoolStats, Visit, VisitorStats
from calltrackd.tracking.model import Pool, StaticNumber, Tracker
from calltrackd.tracking.simulator import CurvePoint, Sizing
from calltrackd.tracking.stats import (
    SizingCache,
    estimated_accuracy,
    pool_visits,
    tracker_stats,
)

ACME = Tracker("acme", "pk", "+70000000000", (), pools=(
    Pool("paid", ("google/cpc",), ("+70000000001", "+70000000002")),
    Pool("seo", ("google/organic",), ("+70000000003",))),
    static=(StaticNumber("+70000000009", "billboard"),))


def calls(kind: str, n: int, answered: int, *, channel: str | None = None,
          source: str | None = None, medium: str | None = None,
          tracker: str = "acme") -> CallStats:
    return CallStats(tracker, kind, channel, source, medium, n, answered, n - answered, 0, n)


def pool(name: str, size: int, peak: int) -> PoolStats:
    return PoolStats("acme", name, size, size - peak, peak, 0, peak, peak, 0)


def test_totals_sources_and_the_trades_accuracy() -> None:
    rows = [calls("dynamic", 6, 5, source="google", medium="cpc"),
            calls("static", 3, 3, channel="billboard"),
            calls("default", 1, 0),
            calls("dynamic", 50, 50, source="x", medium="y", tracker="other")]
    out = tracker_stats(ACME, rows, [], [], [])
    assert (out["calls"], out["answered"], out["missed"]) == (10, 8, 2)
    assert [s["source"] for s in out["sources"]] == ["google/cpc", "billboard", "default"]
    assert out["accuracy"] == 0.9  # one call of ten went to the default number
    assert out["coverage"] is None and out["estimated_accuracy"] is None


def test_coverage_is_visitors_given_a_number_over_all() -> None:
    visitors = [VisitorStats("acme", "google", "cpc", 8, 6),
                VisitorStats("acme", None, None, 2, 0)]
    out = tracker_stats(ACME, [], visitors, [], [])
    assert out["visitors"] == 10 and out["coverage"] == 0.6
    assert out["visitor_sources"][1]["source"] == "(direct)/(none)"


def test_estimated_accuracy_counts_unscored_static_as_right_and_default_as_wrong() -> None:
    rows = [AttributionStats("acme", "paid", "dynamic", 4, 4, 3.0),
            AttributionStats("acme", None, "static", 2, 0, 0.0),
            AttributionStats("acme", None, "default", 2, 0, 0.0),
            AttributionStats("acme", "paid", "expired", 5, 0, 0.0)]  # left out
    assert estimated_accuracy(rows) == round((3.0 + 2) / 8, 4)
    assert estimated_accuracy([]) is None


def test_a_pool_takes_its_replay_when_there_is_one_and_the_rule_of_thumb_otherwise() -> None:
    sizing = Sizing(3, 0.91, (CurvePoint(2, 0.8), CurvePoint(3, 0.91)))
    out = tracker_stats(ACME, [], [], [pool("paid", 2, 2), pool("seo", 1, 5)],
                        [AttributionStats("acme", "paid", "dynamic", 4, 4, 3.2)],
                        {"paid": sizing})
    paid, seo = out["pools"]
    assert (paid["recommended_size"], paid["attainable_accuracy"]) == (3, 0.91)
    assert paid["size_curve"][1] == {"size": 3, "estimated_accuracy": 0.91}
    assert (paid["calls"], paid["estimated_accuracy"]) == (4, 0.8)
    assert (seo["recommended_size"], seo["size_curve"]) == (6, [])  # ceil(5 * 1.2)


def test_shed_invites_are_the_trackers_own() -> None:
    assert tracker_stats(ACME, [], [], [], [], shed={"acme": 7, "other": 2})["shed"] == 7
    assert tracker_stats(ACME, [], [], [], [])["shed"] == 0


def test_visits_go_to_the_pool_serving_their_source() -> None:
    visits = [Visit("acme", 10.0, 20.0, "google", "cpc"),
              Visit("acme", 30.0, 25.0, "google", "organic"),  # a clock step: end >= start
              Visit("acme", 40.0, 50.0, "bing", "cpc")]  # no pool serves it
    by_pool = pool_visits(ACME, visits)
    assert [(v.start, v.end) for v in by_pool["paid"]] == [(10.0, 20.0)]
    assert [(v.start, v.end) for v in by_pool["seo"]] == [(30.0, 30.0)]


def test_replays_are_reused_for_their_ttl_then_made_again() -> None:
    cache = SizingCache(ttl=300.0)
    sizing = Sizing(2, 0.9, ())
    cache.put(("acme", "paid"), 1000.0, sizing)
    pools = [pool("paid", 2, 1), pool("seo", 1, 1), PoolStats("other", "x", 1, 1, 0, 0, 0, 0, 0)]
    assert cache.split("acme", pools, 1299.0) == ({"paid": sizing}, {"seo": 1})
    assert cache.split("acme", pools, 1300.0) == ({}, {"paid": 2, "seo": 1})


def test_the_size_curve_meets_the_pools_own_calls_at_its_size() -> None:
    sizing = Sizing(3, 0.9, (CurvePoint(1, 0.6), CurvePoint(2, 0.85), CurvePoint(3, 0.9)))
    quiet = tracker_stats(ACME, [], [], [pool("paid", 2, 2)],
                          [AttributionStats("acme", "paid", "dynamic", 3, 3, 3.0)],
                          {"paid": sizing})["pools"][0]
    # three calls all sure weigh little against the replay's 0.85 (as 30 calls)
    assert quiet["estimated_accuracy"] == 1.0 and quiet["replayed_accuracy"] == 0.85
    level = round((3.0 + 30 * 0.85) / 33, 4)
    assert quiet["size_curve"][1] == {"size": 2, "estimated_accuracy": level}
    busy = tracker_stats(ACME, [], [], [pool("paid", 2, 2)],
                         [AttributionStats("acme", "paid", "dynamic", 3000, 3000, 2100.0),
                          AttributionStats("acme", "paid", "none", 0, 0, 0.0)],
                         {"paid": sizing})["pools"][0]
    curve = [p["estimated_accuracy"] for p in busy["size_curve"]]
    assert busy["estimated_accuracy"] == 0.7
    assert abs(curve[1] - 0.7) < 0.002  # where the pool is, the calls decide
    shift = curve[1] - 0.85  # and the replay says how it changes with the size
    assert curve == [round(0.6 + shift, 4), curve[1], round(0.9 + shift, 4)]
    assert busy["attainable_accuracy"] == curve[2] and busy["recommended_size"] == 3


def test_a_shifted_curve_stays_within_0_and_1() -> None:
    sizing = Sizing(2, 0.99, (CurvePoint(1, 0.5), CurvePoint(2, 0.99)))
    row = tracker_stats(ACME, [], [], [pool("paid", 1, 1)],
                        [AttributionStats("acme", "paid", "dynamic", 900, 900, 900.0)],
                        {"paid": sizing})["pools"][0]
    assert row["size_curve"][1]["estimated_accuracy"] == 1.0


def test_replays_are_kept_per_period() -> None:
    cache = SizingCache(ttl=300.0)
    sizing = Sizing(2, 0.9, ())
    day, week = cache.window(0.0, 86400.0), cache.window(-6 * 86400.0, 86400.0)
    cache.put(("acme", "paid"), 1000.0, sizing, day)
    assert cache.split("acme", [pool("paid", 2, 1)], 1100.0, day) == ({"paid": sizing}, {})
    assert cache.split("acme", [pool("paid", 2, 1)], 1100.0, week) == ({}, {"paid": 2})
