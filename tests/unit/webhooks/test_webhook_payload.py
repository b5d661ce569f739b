from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from calltrackd.tracking.model import CallRecord, WebhookEndpoint
from calltrackd.webhooks.payload import build_deliveries, event_body

NOW = datetime(2026, 11, 22, 10, 3, 12, 250000, tzinfo=UTC).timestamp()

CALL_KEYS = {
    "id", "tracker", "did", "caller", "started_at", "answered_at", "ended_at",
    "ring_seconds", "talk_seconds", "outcome", "sip_code", "hangup_by", "target",
    "first_time_caller", "qualified", "attribution",
    "tags", "lead_status", "value",  # written back by a CRM (PATCH /v1/calls/{id})
    "carrier",  # (added) the [[carriers]] entry the call came in by
}  # fmt: skip
SESSION_KEYS = {
    "id", "client_id", "ym_uid", "utm_source", "utm_medium", "utm_campaign", "utm_term",
    "utm_content", "referrer", "landing_page", "custom",
    "source", "medium", "channel", "visitor_id", "ga_session_id",  # (added) as classified
}  # fmt: skip


def endpoints() -> list[WebhookEndpoint]:
    return [
        WebhookEndpoint("https://crm.acme.example/a", "s1"),
        WebhookEndpoint("https://crm.acme.example/b", "s2", events=("call.ended",)),
        WebhookEndpoint("https://crm.acme.example/c", "s3", events=("call.started",)),
    ]


def test_body_has_exactly_the_spec_keys(record: CallRecord) -> None:
    doc = json.loads(event_body("call.ended", "evt_1", record, NOW))
    assert set(doc) == {"event", "event_id", "occurred_at", "call"}
    assert doc["event"] == "call.ended"
    assert doc["event_id"] == "evt_1"
    assert doc["occurred_at"] == "2026-11-22T10:03:12.250Z"
    assert set(doc["call"]) == CALL_KEYS
    attribution = doc["call"]["attribution"]
    assert set(attribution) == {"kind", "channel", "source", "medium", "session",
                                "confidence", "pool"}
    assert set(attribution["session"]) == SESSION_KEYS
    assert attribution["session"]["utm_term"] == "купить диван"
    assert doc["call"]["ended_at"] == "2026-11-22T10:03:12.200Z"
    assert doc["call"]["carrier"] == "carrier-a"


def test_body_is_compact_json_equal_to_the_call_object(record: CallRecord) -> None:
    body = event_body("call.ended", "evt_1", record, NOW)
    doc = json.loads(body)
    assert body == json.dumps(doc, separators=(",", ":")).encode()
    assert doc["call"] == record.to_json()


def test_one_event_id_shared_by_every_subscribed_endpoint(record: CallRecord) -> None:
    deliveries = build_deliveries("call.ended", record, endpoints(), NOW)
    assert [d.url for d in deliveries] == [
        "https://crm.acme.example/a",
        "https://crm.acme.example/b",
    ]
    assert len({d.event_id for d in deliveries}) == 1
    assert re.fullmatch(r"evt_[A-Za-z0-9_-]{24}", deliveries[0].event_id)
    assert len({d.id for d in deliveries}) == 2
    assert all(re.fullmatch(r"dlv_[A-Za-z0-9_-]{24}", d.id) for d in deliveries)
    assert len({d.body for d in deliveries}) == 1
    assert json.loads(deliveries[0].body)["event_id"] == deliveries[0].event_id


def test_deliveries_are_pending_and_due_now(record: CallRecord) -> None:
    (d,) = build_deliveries("call.started", record, endpoints()[:1], NOW)
    assert (d.event, d.tracker, d.created_at, d.next_attempt_at) == (
        "call.started",
        "acme",
        NOW,
        NOW,
    )
    assert (d.attempts, d.status, d.last_error) == (0, "pending", None)


def test_endpoints_not_subscribed_get_nothing(record: CallRecord) -> None:
    deliveries = build_deliveries("call.answered", record, endpoints(), NOW)
    assert [d.url for d in deliveries] == ["https://crm.acme.example/a"]
    assert build_deliveries("call.answered", record, endpoints()[1:], NOW) == []


def test_each_event_gets_a_new_event_id(record: CallRecord) -> None:
    a = build_deliveries("call.ended", record, endpoints(), NOW)
    b = build_deliveries("call.ended", record, endpoints(), NOW)
    assert a[0].event_id != b[0].event_id


def test_an_endpoint_listed_twice_gets_the_event_once(record: CallRecord) -> None:
    twice = [endpoints()[0], endpoints()[0]]
    assert len(build_deliveries("call.ended", record, twice, NOW)) == 1


def test_unknown_event_is_refused(record: CallRecord) -> None:
    with pytest.raises(ValueError, match=r"call\.hungup"):
        build_deliveries("call.hungup", record, endpoints(), NOW)
