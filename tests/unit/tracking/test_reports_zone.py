"""Reports in the tracker's time zone: days, hours and weekdays of calls, visits and spend
are local (DST-correct), and a period's days are local days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from calltrackd.tracking import reports as rep
from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession

NY = "America/New_York"  # EDT (-04:00) until 2026-11-01 06:00 UTC, then EST (-05:00)
BERLIN = "Europe/Berlin"  # CET (+01:00) until 2026-03-29 01:00 UTC, then CEST (+02:00)


def call(cid: str, at: datetime, caller: str = "+15550000001") -> CallRecord:
    session = VisitorSession("s_" + cid, "acme", utm_source="google", utm_medium="cpc",
                             utm_campaign="fall", first_seen=at.timestamp(),
                             last_seen=at.timestamp())
    return CallRecord(cid, "acme", "+12120000001", caller, at, outcome="answered",
                      ring_seconds=3.0, talk_seconds=40.0, qualified=True,
                      attribution=Attribution("dynamic", session=session))


def test_zone_segments_find_the_dst_changes_to_the_second() -> None:
    since = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
    until = datetime(2026, 12, 31, tzinfo=UTC).timestamp()
    starts, offsets = rep.zone_segments(NY, since, until)
    assert offsets == (-4 * 3600, -5 * 3600)
    assert starts[1] == datetime(2026, 11, 1, 6, tzinfo=UTC).timestamp()
    spring = rep.zone_segments(BERLIN, datetime(2026, 3, 1, tzinfo=UTC).timestamp(),
                               datetime(2026, 4, 1, tzinfo=UTC).timestamp())
    assert spring == ((float("-inf"), datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()),
                      (3600, 7200))
    moscow = rep.zone_segments("Europe/Moscow", since, until)
    assert moscow == ((float("-inf"),), (3 * 3600,))
    assert rep.zone_segments("UTC", since, until) == ((float("-inf"),), (0,))
    # a period open at both ends is searched from 1970 to 2038, and quickly
    assert len(rep.zone_segments(NY, 0.0, float("inf"))[0]) > 100


def test_calls_fall_on_local_days_and_hours_across_a_dst_change() -> None:
    # 2026-11-01 05:30 UTC is 01:30 EDT; 06:30 UTC is 01:30 EST (the hour repeats);
    # 2026-11-02 03:30 UTC is still 2026-11-01 22:30 EST, a Sunday
    calls = [call("a", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
             call("b", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
             call("c", datetime(2026, 11, 2, 3, 30, tzinfo=UTC))]
    facts = [rep.call_fact(c) for c in calls]
    q = rep.ReportQuery(group_by=("day", "hour", "weekday"), zone=NY,
                        since=datetime(2026, 10, 30, tzinfo=UTC).timestamp(),
                        until=datetime(2026, 11, 5, tzinfo=UTC).timestamp())
    got = sorted((g.key, g.calls) for g in rep.aggregate_calls(facts, q))
    nov1 = rep.day_number("2026-11-01")
    assert got == [((nov1, 1, 7), 2), ((nov1, 22, 7), 1)]
    utc = sorted((g.key, g.calls) for g in rep.aggregate_calls(facts, rep.ReportQuery(
        group_by=("day", "hour"), since=q.since, until=q.until)))
    assert utc == [((nov1, 5), 1), ((nov1, 6), 1), ((nov1 + 1, 3), 1)]
    # filters are local too: hour 22 of New York
    only = rep.ReportQuery(group_by=("day",), zone=NY, since=q.since, until=q.until,
                           filters={"hour": frozenset({22})})
    assert [(g.key, g.calls) for g in rep.aggregate_calls(facts, only)] == [((nov1,), 1)]
    # the facts as the Redis store keeps them give the same groups
    encoded = [rep.encode_fact(f).encode() for f in facts]
    for query in (q, only):
        assert sorted((g.key, g.calls) for g in rep.aggregate_encoded(encoded, {}, query)) == \
            sorted((g.key, g.calls) for g in rep.aggregate_calls(facts, query))


def test_berlin_spring_forward_gives_a_23_hour_day() -> None:
    day = date(2026, 3, 29)
    start, end = rep.local_midnight(day, BERLIN), rep.local_midnight(day + timedelta(1), BERLIN)
    assert end - start == 23 * 3600
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC).timestamp()
    facts = [rep.call_fact(call(f"h{h}", datetime.fromtimestamp(start + h * 3600, UTC)))
             for h in range(23)]
    q = rep.ReportQuery(group_by=("hour",), zone=BERLIN, since=start, until=end)
    hours = sorted(g.key[0] for g in rep.aggregate_calls(facts, q))
    assert hours == [h for h in range(24) if h != 2]  # 02:00-03:00 does not exist that day


def test_visit_cells_and_spend_use_local_days() -> None:
    # a visit at 23:30 UTC is on the next day in Moscow (+03:00)
    at = datetime(2026, 11, 30, 23, 30, tzinfo=UTC).timestamp()
    cell = rep.visit_cell(VisitorSession("s1", "acme", utm_source="google",
                                         utm_medium="cpc", first_seen=at, last_seen=at))
    q = rep.ReportQuery(group_by=("day", "hour"), zone="Europe/Moscow",
                        since=rep.local_midnight(date(2026, 12, 1), "Europe/Moscow"),
                        until=rep.local_midnight(date(2026, 12, 2), "Europe/Moscow"))
    (g,) = rep.aggregate_visits([(cell, 1, 1)], q)
    assert g.key == (rep.day_number("2026-12-01"), 2)
    spend = [rep.SpendRow("acme", "2026-12-01", "google", "cpc", "", 1000, "RUB"),
             rep.SpendRow("acme", "2026-11-30", "google", "cpc", "", 7000, "RUB")]
    assert rep.aggregate_spend(spend, rep.ReportQuery(group_by=("day",), zone=q.zone,
                                                      since=q.since, until=q.until)) == {
        (rep.day_number("2026-12-01"),): (1000, frozenset({"RUB"}))}


def test_local_time_sql_is_a_case_over_the_segments() -> None:
    q = rep.ReportQuery(group_by=("day",), zone=NY,
                        since=datetime(2026, 10, 30, tzinfo=UTC).timestamp(),
                        until=datetime(2026, 11, 5, tzinfo=UTC).timestamp())
    sql = rep.time_sql("day", q, lambda x: f"floor({x})")
    assert sql is not None and "CASE WHEN r.ts < 1793512800.0 THEN -14400 ELSE -18000" in sql
    assert rep.time_sql("day", rep.ReportQuery(group_by=("day",)), str) is None  # UTC
    assert rep.time_sql("campaign", q, str) is None
