"""The export formatters as pure functions: GA4 Measurement Protocol bodies, Metrica's
upload_calls CSV and form, the alert messages, and the configuration that makes them."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from calltrackd.config import ConfigError, parse_config
from calltrackd.exports import OutboxDestinations, OutboxRows, export_rows, ga4, metrica
from calltrackd.exports import alerts as alerts_mod
from calltrackd.tracking.model import (
    AlertExport,
    Attribution,
    CallRecord,
    Ga4Export,
    MetricaExport,
    Tracker,
    VisitorSession,
)

GA = Ga4Export("G-TEST123", "sekret-api")
YM = MetricaExport(12345, "y0_oauth_token", upload_interval=60)
TG = AlertExport("telegram", bot_token="123:tg-token", chat_id="-100200")
SLACK = AlertExport("slack", url="https://hooks.slack.example/services/T/B/X", name="abc")


def tracker(**kw: Any) -> Tracker:
    return Tracker(id="acme", public_key="pk", default_number="+74990000000", forward=(),
                   **kw)


# --- GA4 ----------------------------------------------------------------------------------


def test_ga_client_id_is_the_cookie_without_its_prefix() -> None:
    assert ga4.ga_client_id("GA1.2.111.222") == "111.222"
    assert ga4.ga_client_id("GA1.1.1234567890.1690000000") == "1234567890.1690000000"
    assert ga4.ga_client_id("111.222") == "111.222"
    assert ga4.ga_client_id("junk") is None and ga4.ga_client_id(None) is None


def test_ga_session_id_from_digits_or_either_cookie_format() -> None:
    assert ga4.ga_session_id("1690000000") == "1690000000"
    assert ga4.ga_session_id("GS1.1.1690000000.3.1.1690000100.0.0.0") == "1690000000"
    assert ga4.ga_session_id("GS2.1.s1690000000$o3$g1$t1690000100$j0$l0$h0") == "1690000000"
    assert ga4.ga_session_id("nonsense") is None and ga4.ga_session_id(None) is None


def test_ga4_body_follows_the_measurement_protocol(record: CallRecord) -> None:
    doc = json.loads(ga4.ga4_body(record, GA))
    assert doc["client_id"] == "111.222"
    assert doc["timestamp_micros"] == int(record.started_at.timestamp() * 1_000_000)
    names = [e["name"] for e in doc["events"]]
    assert names == ["calltrackd_call", "calltrackd_qualified_call"]
    params = doc["events"][0]["params"]
    assert params["outcome"] == "answered" and params["qualified"] == 1
    assert params["duration"] == 63 and params["tracking_number"] == "+74990000001"
    assert (params["source"], params["medium"], params["campaign"]) == ("google", "cpc",
                                                                          "spring")
    assert record.caller not in json.dumps(doc)  # no personal data goes to GA
    assert "session_id" not in params  # the snippet read no GA session id
    for event in doc["events"]:
        assert len(event["name"]) <= ga4.MAX_NAME and len(event["params"]) <= ga4.MAX_PARAMS
        assert all(len(k) <= ga4.MAX_NAME for k in event["params"])
        assert all(len(v) <= ga4.MAX_VALUE for v in event["params"].values()
                   if isinstance(v, str))


def test_ga4_body_uses_the_session_id_and_the_newer_attribution_fields(
    record: CallRecord,
) -> None:
    att = record.attribution
    assert att is not None and att.session is not None
    seen = att.session

    class Session:  # a session of a newer build: more fields than this one knows
        def __init__(self, base: VisitorSession) -> None:
            self.__dict__.update({f: getattr(base, f) for f in base.__slots__})
            self.ga_session_id = "GS1.1.1690000000.3.1.1690000100.0.0.0"
            self.utm_campaign = "x" * 300

    class Att:
        kind, channel, source, medium, error = "dynamic", "paid", "google", "cpc", None
        session = Session(seen)

    doc = json.loads(ga4.ga4_body(replace(record, attribution=Att()), GA))  # type: ignore[arg-type]
    params = doc["events"][0]["params"]
    assert params["session_id"] == "1690000000" and params["engagement_time_msec"] == 1
    assert params["channel"] == "paid"
    assert params["campaign"] == "x" * 100  # values cut at 100 characters


def test_ga4_outcome_events_and_calls_without_a_client_id(record: CallRecord) -> None:
    busy = replace(record, outcome="busy", qualified=False, talk_seconds=0.0)
    export = replace(GA, outcome_events=(("busy", "calltrackd_missed_call"),))
    doc = json.loads(ga4.ga4_body(busy, export))
    assert [e["name"] for e in doc["events"]] == ["calltrackd_missed_call"]
    static = replace(record, attribution=Attribution(kind="static", channel="billboard"))
    assert ga4.ga4_body(static, GA) == "no GA client id"


def test_ga4_event_names_are_checked_as_ga4_does() -> None:
    assert ga4.event_name_problem("calltrackd_call") is None
    assert ga4.event_name_problem("x" * 41) is not None
    assert ga4.event_name_problem("1call") is not None
    assert ga4.event_name_problem("google_call") is not None
    assert ga4.event_name_problem("session_start") is not None


def test_ga4_row_older_than_72_hours_is_not_sent(record: CallRecord) -> None:
    (row,) = export_rows(record, tracker(analytics=(GA,)), now=record.started_at.timestamp())
    dest = ga4.Ga4Destination(GA)
    ok = dest.prepare([row], record.started_at.timestamp() + 71 * 3600)
    assert ok.request is not None and not ok.skip
    assert ok.request.url == ("https://www.google-analytics.com/mp/collect?"
                              "measurement_id=G-TEST123&api_secret=sekret-api")
    assert ok.request.secrets == ("sekret-api",)
    late = dest.prepare([row], record.started_at.timestamp() + 73 * 3600)
    assert late.request is None and late.skip == [(row, "older than GA4's 72-hour window")]


# --- Metrica --------------------------------------------------------------------------------


def parse_upload(body: bytes, content_type: str) -> list[dict[str, str]]:
    boundary = content_type.split("boundary=", 1)[1]
    parts = body.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    (part,) = parts[1:-1]
    head, _, content = part.partition(b"\r\n\r\n")
    assert b'Content-Disposition: form-data; name="file"; filename="calls.csv"' in head
    return list(csv.DictReader(io.StringIO(content.rstrip(b"\r\n").decode())))


def test_metrica_upload_is_the_documented_csv_in_a_multipart_form(record: CallRecord) -> None:
    now = record.started_at.timestamp() + 100
    rows = export_rows(record, tracker(analytics=(YM,)), now, "https://track.example/")
    missed = replace(record, id="c_2", outcome="no_answer", answered_at=None, talk_seconds=0.0,
                     qualified=False, first_time_caller=False)
    rows += export_rows(missed, tracker(analytics=(YM,)), now)
    assert all(r.kind == "metrica" and r.url == "metrica:12345" for r in rows)
    assert all(r.next_attempt_at % 60 == 0 and r.next_attempt_at >= now for r in rows)
    prepared = metrica.MetricaDestination(YM).prepare(rows, now)
    req = prepared.request
    assert req is not None and prepared.send == rows
    assert req.url == ("https://api-metrika.yandex.net/management/v1/counter/12345/"
                       "offline_conversions/upload_calls?client_id_type=CLIENT_ID"
                       "&comment=calltrackd")
    assert req.headers["Authorization"] == "OAuth y0_oauth_token"
    table = parse_upload(req.body, req.headers["Content-Type"])
    assert list(table[0]) == list(metrica.COLUMNS)
    first, second = table
    assert first == {
        "ClientId": "1690000000123", "DateTime": str(int(record.started_at.timestamp())),
        "PhoneNumber": "+74990000001", "TalkDuration": "63", "HoldDuration": "4",
        "CallMissed": "0", "Tag": "qualified", "FirstTimeCaller": "1",
        "URL": "https://acme.example/sofas",
        "CallTrackerURL": "https://track.example/ui/#/calls/c_1", "StaticCall": "0"}
    assert (second["CallMissed"], second["Tag"], second["FirstTimeCaller"],
            second["CallTrackerURL"]) == ("1", "no_answer", "0", "")


def test_metrica_leaves_out_calls_older_than_21_days(record: CallRecord) -> None:
    now = record.started_at.timestamp()
    old_record = replace(record, id="c_old", started_at=record.started_at - timedelta(days=22))
    fresh, old = (export_rows(r, tracker(analytics=(YM,)), now)[0] for r in (record, old_record))
    prepared = metrica.MetricaDestination(YM).prepare([old, fresh], now)
    assert prepared.send == [fresh]
    assert prepared.skip == [(old, "older than Metrica's 21 days")]


def test_metrica_needs_a_metrica_client_id(record: CallRecord) -> None:
    skipped: list[tuple[str, str]] = []
    static = replace(record, attribution=Attribution(kind="static", channel="billboard"))
    assert export_rows(static, tracker(analytics=(YM, GA)), 0.0,
                       on_skip=lambda k, r: skipped.append((k, r))) == []
    assert skipped == [("metrica", "no Metrica client id"), ("ga4", "no GA client id")]


# --- alerts --------------------------------------------------------------------------------


def test_missed_call_alert_names_caller_number_channel_time_and_link(
    record: CallRecord,
) -> None:
    busy = replace(record, outcome="busy", answered_at=None, ring_seconds=4.2,
                   attribution=Attribution(kind="static", channel="billboard"))
    text = alerts_mod.alert_text(busy, "Europe/Moscow", "https://track.example")
    assert text.splitlines() == [
        "Missed call (busy) from +79161234567 to +74990000001",
        "channel: billboard · 2026-11-22 13:02:05 MSK · rang 4 s",
        "https://track.example/ui/#/calls/c_1",
    ]
    assert "UTC" in alerts_mod.alert_text(busy, None, None)  # no zone set: UTC, no link
    assert "ui/#" not in alerts_mod.alert_text(busy, "Not/AZone", None)


def test_alerts_go_only_for_missed_calls_in_the_shape_of_each_service(
    record: CallRecord,
) -> None:
    t = tracker(alerts=(TG, SLACK))
    assert export_rows(record, t, 0.0) == []  # answered: no alert
    busy = replace(record, outcome="busy")
    tg_row, slack_row = export_rows(busy, t, 0.0)
    assert (tg_row.kind, tg_row.url, slack_row.kind, slack_row.url) == (
        "telegram", "telegram:-100200", "slack", "slack:abc")
    tg = alerts_mod.AlertDestination(TG).prepare([tg_row], 0.0).request
    assert tg is not None
    assert tg.url == "https://api.telegram.org/bot123:tg-token/sendMessage"
    body = json.loads(tg.body)
    assert body["chat_id"] == "-100200" and body["text"].startswith("Missed call (busy)")
    assert tg.secrets == ("123:tg-token",)
    sl = alerts_mod.AlertDestination(SLACK).prepare([slack_row], 0.0).request
    assert sl is not None and sl.url == SLACK.url and list(json.loads(sl.body)) == ["text"]
    dest = alerts_mod.AlertDestination(TG)
    assert dest.accepted(200, b'{"ok":true,"result":{}}') is None
    assert dest.accepted(200, b'{"ok":false}') is not None
    assert dest.accepted(400, b'{"ok":false,"description":"chat not found"}') == (
        "HTTP 400: chat not found")
    assert dest.retry_after(b'{"ok":false,"error_code":429,"parameters":{"retry_after":7}}') \
        == 7.0
    assert dest.retry_after(b"nonsense") is None


# --- configuration -------------------------------------------------------------------------


def config(extra: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(f"""
[http]
public_url = "https://track.example"
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070"]
{extra}
""")


def test_analytics_and_alerts_are_read_from_the_configuration() -> None:
    s = parse_config(config("""
  [[trackers.analytics]]
  kind = "ga4"
  measurement_id = "G-ABC123"
  api_secret = "s3cr3t"
  base_url = "http://127.0.0.1:9/"
  outcome_events = { busy = "missed_call" }
  [[trackers.analytics]]
  kind = "metrica"
  counter_id = 12345
  token = "y0_token"
  upload_interval = "5m"
  [[trackers.alerts]]
  kind = "telegram"
  bot_token = "123:abc"
  chat_id = -100200
  [[trackers.alerts]]
  kind = "slack"
  url = "https://hooks.slack.example/services/T/B/X"
  outcomes = ["no_answer"]
  [[trackers.webhooks]]
  url = "https://crm.example/hook"
  secret = "whsec"
  batch = 50
"""))
    (t,) = s.trackers
    g, m = t.analytics
    assert isinstance(g, Ga4Export) and isinstance(m, MetricaExport)
    assert g.base_url == "http://127.0.0.1:9" and g.outcome_events == (("busy", "missed_call"),)
    assert (m.counter_id, m.upload_interval) == (12345, 300.0)
    tg, sl = t.alerts
    assert tg.chat_id == "-100200" and sl.outcomes == ("no_answer",)
    assert t.webhooks[0].batch == 50
    assert s.http.public_url == "https://track.example"
    assert (s.webhooks.concurrency, s.webhooks.initial_concurrency) == (32, 4)


def test_bad_exports_get_one_line_each_naming_the_key_and_never_the_secret() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config("""
  [[trackers.analytics]]
  kind = "ga4"
  measurement_id = "UA-1"
  api_secret = "has a space-SECRET"
  event = "google_call"
  [[trackers.analytics]]
  kind = "metrica"
  counter_id = "abc"
  [[trackers.analytics]]
  kind = "matomo"
  [[trackers.alerts]]
  kind = "telegram"
  bot_token = "123:tok"
  [[trackers.alerts]]
  kind = "slack"
  url = "ftp://x"
"""))
    problems = err.value.problems
    keys = [p.split(":", 1)[0] for p in problems]
    assert keys == [
        "trackers[0].analytics[0].measurement_id", "trackers[0].analytics[0].api_secret",
        "trackers[0].analytics[0].event", "trackers[0].analytics[1].counter_id",
        "trackers[0].analytics[1].token", "trackers[0].analytics[2].kind",
        "trackers[0].alerts[0].chat_id", "trackers[0].alerts[1].url",
    ], problems
    assert not any("SECRET" in p or "123:tok" in p for p in problems)


def test_destinations_follow_the_configuration_of_the_moment(record: CallRecord) -> None:
    current = [tracker(analytics=(GA,), alerts=(TG,))]
    resolve = OutboxDestinations(lambda: current)
    rows = OutboxRows(lambda: None).rows("call.ended", replace(record, outcome="busy"),
                                         current[0], 0.0)
    assert [r.kind for r in rows] == ["ga4", "telegram"]
    assert all(resolve(r) is not None for r in rows)
    current = [tracker()]  # a reload dropped them: their rows are marked failed
    assert all(resolve(r) is None for r in rows)
    assert OutboxRows(lambda: None).rows("call.started", record, tracker(analytics=(GA,)),
                                         0.0) == []  # exports go with call.ended only


def test_alert_time_uses_utc_when_no_zone(record: CallRecord) -> None:
    r = replace(record, outcome="busy", started_at=datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
    assert "2026-01-01 00:00:00 UTC" in alerts_mod.alert_text(r, None, None)
