from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession


@pytest.fixture
def record() -> CallRecord:
    """A finished, attributed call, as in the README's webhook example."""
    session = VisitorSession(
        id="s_abc",
        tracker="acme",
        client_id="GA1.2.111.222",
        ym_uid="1690000000123",
        utm_source="google",
        utm_medium="cpc",
        utm_campaign="spring",
        utm_term="купить диван",
        referrer="https://www.google.com/",
        landing_page="https://acme.example/sofas",
        custom={"product_id": "42"},
    )
    return CallRecord(
        id="c_1",
        tracker="acme",
        did="+74990000001",
        caller="+79161234567",
        carrier="carrier-a",
        started_at=datetime(2026, 11, 22, 10, 2, 5, tzinfo=UTC),
        answered_at=datetime(2026, 11, 22, 10, 2, 9, 200000, tzinfo=UTC),
        ended_at=datetime(2026, 11, 22, 10, 3, 12, 200000, tzinfo=UTC),
        ring_seconds=4.2,
        talk_seconds=63.0,
        outcome="answered",
        sip_code=200,
        hangup_by="caller",
        target="sip:pbx.acme.example:5060;transport=udp",
        first_time_caller=True,
        qualified=True,
        attribution=Attribution(kind="dynamic", session=session),
    )
