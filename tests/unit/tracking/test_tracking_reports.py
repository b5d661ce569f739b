"""The pure report logic: facts of a call, grouping, spend apportioning, CPL and ROI."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from calltrackd.tracking import reports as rep
from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession

T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)  # a Monday


def call(cid: str, campaign: str | None, term: str | None, *, qualified: bool = True,
         value: float | None = None, tags: tuple[str, ...] = (), minutes: int = 0,
         caller: str = "+79160000001") -> CallRecord:
    session = VisitorSession("s_" + cid, "acme", utm_source="Google", utm_medium="CPC",
                             utm_campaign=campaign, utm_term=term,
                             landing_page="https://Acme.example/sofas?utm_source=google#top",
                             referrer="https://www.google.com/search?q=sofa")
    return CallRecord(cid, "acme", "+74990000001", caller, T0 + timedelta(minutes=minutes),
                      outcome="answered", ring_seconds=4.2, talk_seconds=63.0,
                      first_time_caller=True, qualified=qualified,
                      attribution=Attribution("dynamic", session=session), tags=tags,
                      value=value)


def test_a_calls_fact_carries_the_visit_source_in_report_form() -> None:
    fact = rep.call_fact(call("c1", "spring", "buy sofa", value=12.34, tags=("hot",)))
    assert (fact.source, fact.medium, fact.campaign, fact.term) == ("google", "cpc", "spring",
                                                                  "buy sofa")
    assert fact.landing_page == "https://acme.example/sofas"
    assert fact.referrer_domain == "google.com"
    assert (fact.day, fact.hour) == (rep.day_number("2026-11-30"), 9)
    assert rep.weekday(fact.day) == 1
    assert (fact.ring_ms, fact.talk_ms, fact.value_cents, fact.tags) == (4200, 63000, 1234,
                                                                         ("hot",))
    assert rep.landing_page("http://[::1/broken?x=1") == "http://[::1/broken"
    assert rep.referrer_domain("http://[::1/broken") is None
    assert rep.referrer_domain("::::") is None
    static = CallRecord("c2", "acme", "+74990000009", "anonymous", T0,
                        attribution=Attribution("static", channel="billboard"))
    f2 = rep.call_fact(static)
    assert (f2.channel, f2.static_channel, f2.caller, f2.source) == ("billboard", "billboard",
                                                                     None, None)


def test_the_classified_source_wins_over_the_utm_tags_once_the_record_has_it() -> None:
    class Classified:  # what the attribution looks like once classification lands
        kind, channel, source, medium = "dynamic", "organic", "Google", "organic"
        session = None

    assert rep.call_traffic(Classified()) == ("organic", "google", "organic")  # type: ignore[arg-type]


def test_spend_joins_rows_on_campaign_and_gives_cpl_and_roi() -> None:
    calls = [call("a1", "spring", "buy sofa", value=3000.0), call("a2", "spring", "sofa price"),
             call("a3", "spring", "sofa price", qualified=False),
             call("b1", "autumn", "buy sofa", value=100.0)]
    spend = [rep.SpendRow("acme", "2026-11-30", "google", "cpc", "spring", 120000, "RUB"),
             rep.SpendRow("acme", "2026-11-30", "google", "cpc", "winter", 5000, "RUB"),
             rep.SpendRow("acme", "2026-12-01", "google", "cpc", "spring", 99900, "RUB")]
    q = rep.ReportQuery(("campaign",), since=T0.replace(hour=0, minute=0).timestamp(),
                        until=(T0 + timedelta(hours=2)).timestamp())
    groups = rep.aggregate_calls([rep.call_fact(c) for c in calls], q)
    rows, totals = rep.build_rows(q, groups, [], rep.aggregate_spend(spend, q))
    by = {r["key"]["campaign"]: r for r in rows}
    assert set(by) == {"spring", "autumn", "winter"}  # spend without calls is a row too
    spring = by["spring"]
    assert (spring["calls"], spring["qualified"], spring["spend"]) == (3, 2, 1200.0)
    assert spring["cpl"] == 600.0
    assert spring["revenue"] == 3000.0 and spring["roi"] == 1.5
    # no spend entered for it: spend 0, so CPL 0 and no ROI (nothing was invested)
    assert (by["autumn"]["spend"], by["autumn"]["cpl"], by["autumn"]["roi"]) == (0.0, 0.0,
                                                                                None)
    assert by["winter"]["calls"] == 0 and by["winter"]["roi"] == -1.0
    assert totals["spend"] == 1250.0 and totals["calls"] == 4 and totals["revenue"] == 3100.0


def test_spend_is_not_invented_for_a_dimension_it_does_not_have() -> None:
    spend = [rep.SpendRow("acme", "2026-11-30", "google", "cpc", "spring", 100, "RUB")]
    q = rep.ReportQuery(("campaign", "term"))
    assert not q.spend_applies()
    rows, totals = rep.build_rows(q, rep.aggregate_calls(
        [rep.call_fact(call("a", "spring", "x"))], q), [], rep.aggregate_spend(spend, q))
    assert [(r["spend"], r["cpl"], r["roi"]) for r in rows] == [(None, None, None)]
    assert totals["spend"] is None
    mixed = [*spend, replace(spend[0], source="yandex", currency="USD")]
    q2 = rep.ReportQuery(("campaign",))
    rows, _ = rep.build_rows(q2, [], [], rep.aggregate_spend(mixed, q2))
    assert rows[0]["spend"] is None  # RUB and USD are not added up


def test_group_by_tag_counts_a_call_under_each_of_its_tags_and_filters_by_any() -> None:
    facts = [rep.call_fact(c) for c in (call("a", "s", None, tags=("hot", "vip")),
                                        call("b", "s", None, tags=("hot",)),
                                        call("c", "s", None))]
    q = rep.ReportQuery(("tag",))
    assert {g.key: g.calls for g in rep.aggregate_calls(facts, q)} == {
        ("hot",): 2, ("vip",): 1, (None,): 1}
    q = rep.ReportQuery(("campaign",), filters={"tag": frozenset({"vip"})})
    assert [g.calls for g in rep.aggregate_calls(facts, q)] == [1]
    q = rep.ReportQuery(("tag",), filters={"tag": frozenset({"vip"})})
    assert {g.key: g.calls for g in rep.aggregate_calls(facts, q)} == {("vip",): 1}


def test_visitors_are_null_where_a_visit_has_no_such_dimension() -> None:
    q = rep.ReportQuery(("tag",))
    assert not q.visits_apply()
    rows, _ = rep.build_rows(q, rep.aggregate_calls([rep.call_fact(call("a", "s", None))], q),
                             [rep.VisitGroup(("x",), 5, 2)], {})
    assert [(r["visitors"], r["coverage"]) for r in rows] == [(None, None)]
    q = rep.ReportQuery(("campaign",))
    rows, _ = rep.build_rows(q, [], [rep.VisitGroup(("s",), 8, 6)], {})
    assert (rows[0]["visitors"], rows[0]["visitors_dynamic"], rows[0]["coverage"]) == (8, 6,
                                                                                       0.75)


def test_encoded_facts_aggregate_as_the_reference_does() -> None:
    rnd = random.Random(11)
    records = [call(f"c{i}", rnd.choice(("spring", None)), rnd.choice(("x", "y", None)),
                    qualified=rnd.random() < 0.5, value=rnd.choice((None, 10.5)),
                    tags=rnd.choice(((), ("hot",), ("hot", "vip"))), minutes=rnd.randrange(3000),
                    caller=f"+7916{rnd.randrange(20)}") for i in range(300)]
    facts = [rep.call_fact(r) for r in records]
    encoded = [rep.encode_fact(f).encode() for f in facts]
    crm = {f.id.encode(): rep.encode_crm(f.tags, f.value_cents).encode() for f in facts}
    pools = {"+74990000001": "paid"}
    for q in (rep.ReportQuery(("campaign", "term"), pools=pools),
              rep.ReportQuery(("tag", "day", "hour"), pools=pools),
              rep.ReportQuery(("tag", "campaign"), filters={"tag": frozenset({"vip"})}),
              rep.ReportQuery(("pool", "weekday", "first_time"), pools=pools,
                              filters={"tag": frozenset({"vip"}), "term": frozenset({"x"})}),
              rep.ReportQuery((), since=(T0 + timedelta(hours=10)).timestamp(),
                              until=(T0 + timedelta(hours=30)).timestamp())):
        def key(g: rep.CallGroup) -> str:
            return repr(g.key)

        assert sorted(rep.aggregate_encoded(encoded, crm, q), key=key) == sorted(
            rep.aggregate_calls(facts, q), key=key)


def test_rows_by_term_get_their_spend_from_campaign_subtotals() -> None:
    q = rep.ReportQuery(("campaign", "term"))
    coarse = rep.spend_query(q)
    assert coarse is not None and coarse.group_by == ("campaign",)
    assert rep.spend_query(rep.ReportQuery(("tag", "campaign"))) is None
    assert rep.spend_query(rep.ReportQuery(("campaign",), filters={"term": frozenset({"x"})})
                           ) is None
    facts = [rep.call_fact(c) for c in (call("a", "spring", "x", value=50.0),
                                        call("b", "spring", "y", qualified=False),
                                        call("c", "autumn", "x"))]
    calls, _ = rep.rollup(q, coarse, rep.aggregate_calls(facts, q), [])
    spend = rep.aggregate_spend(
        [rep.SpendRow("acme", "2026-11-30", "google", "cpc", "spring", 10000, "RUB")], coarse)
    rows, _ = rep.build_rows(coarse, calls, [], spend)
    spring = next(r for r in rows if r["key"] == {"campaign": "spring"})
    assert (spring["calls"], spring["qualified"], spring["spend"], spring["cpl"],
            spring["roi"], spring["unique_callers"]) == (2, 1, 100.0, 100.0, -0.5, None)


def test_a_calls_later_saves_reuse_its_traffic_and_carry_their_own_outcome() -> None:
    ringing = replace(call("c1", "spring", "buy sofa"), outcome=None, talk_seconds=None)
    ended = replace(ringing, outcome="answered", talk_seconds=63.0)
    assert ended.attribution is ringing.attribution  # as a call's saves carry it
    first, last = rep.call_fact(ringing), rep.call_fact(ended)
    assert (first.outcome, first.talk_ms, last.outcome, last.talk_ms) == (None, None,
                                                                        "answered", 63000)
    fresh = rep.call_fact(replace(ended, attribution=replace(ended.attribution)))  # type: ignore[type-var]
    assert fresh == last
    # another attribution of the same call (a later classification) is read anew
    other = replace(ended, attribution=Attribution("static", channel="Billboard "))
    assert (rep.call_fact(other).channel, rep.call_fact(other).campaign) == ("Billboard",
                                                                             None)


def test_facts_stay_right_past_the_traffic_caches_size() -> None:
    records = [call(f"c{i}", f"campaign-{i}", None) for i in range(5000)]
    facts = [rep.call_fact(r) for r in records]
    again = [rep.call_fact(r) for r in records]  # the oldest were evicted, the rest hit
    assert [f.campaign for f in facts] == [f"campaign-{i}" for i in range(5000)]
    assert again == facts
