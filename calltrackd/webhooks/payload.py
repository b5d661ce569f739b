"""Webhook events as outbox rows: the documented body, built once per event.

The body is serialised here, when the event happens, and stored with the delivery: every
endpoint and every retry sends the same bytes under the same `event_id`, which is what
lets receivers deduplicate (at-least-once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from calltrackd.tracking.model import CallRecord, WebhookDelivery, WebhookEndpoint

from .. import ids

__all__ = [
    "EVENTS",
    "build_deliveries",
    "event_body",
    "iso_utc",
    "new_delivery_id",
    "new_event_id",
]

# call.updated: a CRM changed the call's tags, lead_status or value (PATCH /v1/calls/{id})
EVENTS: Final = frozenset({"call.started", "call.answered", "call.ended", "call.updated",
                           "call.recording"})

# 18 random bytes are 24 url-safe base64 characters: 144 bits, no padding.
_ID_BYTES: Final = 18


def new_event_id() -> str:
    return "evt_" + ids.token_urlsafe(_ID_BYTES)


def new_delivery_id() -> str:
    return "dlv_" + ids.token_urlsafe(_ID_BYTES)


def iso_utc(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and `Z`, like the call object's times."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event_body(event: str, event_id: str, record: CallRecord, occurred_at: float) -> bytes:
    """The exact bytes POSTed (and signed) for one event: compact JSON, ASCII."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; expected one of {sorted(EVENTS)}")
    doc = {
        "event": event,
        "event_id": event_id,
        "occurred_at": iso_utc(occurred_at),
        "call": record.to_json(),
    }
    # ensure_ascii keeps the bytes valid whatever a visitor put into custom data (a lone
    # surrogate from a browser would make a UTF-8 encode raise and lose the event).
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def build_deliveries(
    event: str,
    record: CallRecord,
    endpoints: Sequence[WebhookEndpoint],
    now: float,
) -> list[WebhookDelivery]:
    """One outbox row per endpoint subscribed to `event`, all sharing one event_id.

    The caller commits these together with the CDR change that caused them
    (`store.save_call(record, deliveries)`). An endpoint URL listed twice gets one
    delivery: the worker finds secrets by (tracker, url), so a second row would only
    send the same event to the same place again.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; expected one of {sorted(EVENTS)}")
    if not any(event in e.events for e in endpoints):
        return []  # nobody subscribed: no JSON to build
    event_id = new_event_id()
    body = event_body(event, event_id, record, now)
    out: list[WebhookDelivery] = []
    seen: set[str] = set()
    for endpoint in endpoints:
        if event not in endpoint.events or endpoint.url in seen:
            continue
        seen.add(endpoint.url)
        out.append(
            WebhookDelivery(
                id=new_delivery_id(),
                event_id=event_id,
                event=event,
                tracker=record.tracker,
                url=endpoint.url,
                body=body,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
    return out
