"""GET /v1/reports in the tracker's time zone: a call at 23:30 UTC is on the next local
day of a tracker in Moscow (+03:00); `since`/`until` days are local days; `?tz=` shows
the same calls in another zone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from calltrackd.store import create_store
from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession

from .conftest import free_port, start_daemon
from .test_tracking_flow import STATIC, config


async def _seed(url: str) -> None:
    store = create_store(url)
    await store.open()
    for cid, at in (("c_late", datetime(2026, 11, 30, 23, 30, tzinfo=UTC)),
                    ("c_eve", datetime(2026, 11, 30, 20, 0, tzinfo=UTC))):
        session = VisitorSession("s_" + cid, "acme", utm_source="google", utm_medium="cpc",
                                 utm_campaign="winter", first_seen=at.timestamp(),
                                 last_seen=at.timestamp())
        await store.save_call(CallRecord(
            cid, "acme", STATIC, "+79160000001", at, ended_at=at, outcome="answered",
            ring_seconds=2.0, talk_seconds=45.0, qualified=True,
            attribution=Attribution("dynamic", session=session)))
    await store.close()


def test_a_late_utc_call_is_on_the_next_local_day_of_a_moscow_tracker(tmp_path: Path) -> None:
    asyncio.run(_seed(f"sqlite://{tmp_path}/var/calltrackd.db"))
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, "http://127.0.0.1:9/hook").replace(
        'id = "acme"', 'id = "acme"\ntimezone = "Europe/Moscow"')
    daemon = start_daemon(tmp_path, cfg, sip, http)
    try:
        base = "/v1/reports?tracker=acme&group_by=day,hour"
        status, body = daemon.http("GET", base + "&since=2026-11-30&until=2026-12-02")
        assert status == 200, body
        assert body["timezone"] == "Europe/Moscow"
        # since 2026-11-30 is Moscow's midnight: 2026-11-29T21:00Z
        assert body["since"] == "2026-11-29T21:00:00Z"
        assert [(r["key"], r["calls"]) for r in body["rows"]] == [
            ({"day": "2026-11-30", "hour": 23}, 1), ({"day": "2026-12-01", "hour": 2}, 1)]
        status, body = daemon.http("GET", "/v1/reports?tracker=acme&group_by=campaign"
                                          "&since=2026-12-01&until=2026-12-02")
        assert status == 200 and body["totals"]["calls"] == 1, body
        status, body = daemon.http("GET", base + "&since=2026-11-30&until=2026-12-02&tz=UTC")
        assert status == 200, body
        assert [(r["key"], r["calls"]) for r in body["rows"]] == [
            ({"day": "2026-11-30", "hour": 20}, 1), ({"day": "2026-11-30", "hour": 23}, 1)]
        # an instant with an offset stays that instant
        status, body = daemon.http("GET", "/v1/reports?tracker=acme&group_by=day"
                                          "&since=2026-11-30T23:00:00Z&until=2026-12-02")
        assert status == 200 and body["totals"]["calls"] == 1, body
        status, body = daemon.http("GET", base + "&tz=Mars/Olympus")
        assert status == 400 and "tz" in body["error"]["message"], body
    finally:
        daemon.stop()
