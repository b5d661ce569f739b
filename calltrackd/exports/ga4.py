"""Google Analytics 4 through the Measurement Protocol: one request per ended call.

    POST {base_url}/mp/collect?measurement_id=G-XXXX&api_secret=SECRET
    {"client_id": "111.222", "timestamp_micros": 1795392125000000,
     "events": [{"name": "calltrackd_call", "params": {"outcome": "answered", ...}}]}

The client id is the visitor's `_ga` cookie without its `GA1.2.` prefix; the session id,
when the snippet read one from the `_ga_<container>` cookie, goes into each event's
`session_id` with `engagement_time_msec` so that GA ties the event to that visit. The
event carries the call's start time (`timestamp_micros`), which GA accepts up to 72 hours
back: a row still unsent after that is not sent (counted as skipped). A call without a GA
client id makes no row at all (counted). Caller numbers are never sent (GA's terms forbid
personal data); the tracking number (the number dialled) is.

Limits (GA4 collection limits): at most 25 events per request, 25 parameters per event,
event and parameter names up to 40 characters, parameter values up to 100 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from calltrackd.tracking.model import CallRecord, Ga4Export, WebhookDelivery
from calltrackd.webhooks.destinations import USER_AGENT, Prepared, Request, http_error

from .common import channel_of, medium_of, session_of, source_of, started_ts, text_or_none

__all__ = [
    "MAX_EVENTS",
    "MAX_NAME",
    "MAX_PARAMS",
    "MAX_VALUE",
    "WINDOW",
    "Ga4Destination",
    "event_name_problem",
    "ga4_body",
    "ga_client_id",
    "ga_session_id",
]

WINDOW: Final = 72 * 3600.0  # how far back GA4 accepts timestamp_micros
MAX_EVENTS: Final = 25
MAX_PARAMS: Final = 25
MAX_NAME: Final = 40
MAX_VALUE: Final = 100
NO_CLIENT_ID: Final = "no GA client id"
TOO_OLD: Final = "older than GA4's 72-hour window"

_CLIENT_ID = re.compile(r"^(?:GA\d+\.\d+\.)?(\d+\.\d+)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag.")
_RESERVED_NAMES = frozenset({
    "ad_activeview", "ad_click", "ad_exposure", "ad_query", "ad_reward", "adunit_exposure",
    "app_background", "app_clear_data", "app_exception", "app_remove", "app_store_refund",
    "app_store_subscription_cancel", "app_store_subscription_convert",
    "app_store_subscription_renew", "app_update", "app_upgrade", "dynamic_link_app_open",
    "dynamic_link_app_update", "dynamic_link_first_open", "error", "first_open",
    "first_visit", "in_app_purchase", "notification_dismiss", "notification_foreground",
    "notification_open", "notification_receive", "os_update", "session_start",
    "session_start_with_rollout", "user_engagement",
})


def event_name_problem(name: str) -> str | None:
    """Why GA4 would drop an event of this name, or None (for configuration checks)."""
    if len(name) > MAX_NAME:
        return f"at most {MAX_NAME} characters"
    if not _NAME.match(name):
        return "letters, digits and underscores, starting with a letter"
    if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
        return "a name GA4 reserves"
    return None


def ga_client_id(raw: str | None) -> str | None:
    """The client id of a `_ga` cookie value ("GA1.2.111.222" → "111.222")."""
    text = text_or_none(raw)
    if text is None:
        return None
    m = _CLIENT_ID.match(text)
    return m.group(1) if m else None


def ga_session_id(raw: Any) -> str | None:
    """A GA4 session id: digits, or read from a `_ga_<container>` cookie value
    ("GS1.1.1690000000.3.1..." or "GS2.1.s1690000000$o3$g1...")."""
    text = text_or_none(raw)
    if text is None:
        return None
    if text.isascii() and text.isdigit():
        return text
    parts = text.split(".")
    if len(parts) >= 3 and parts[0].startswith("GS"):
        third = parts[2]
        if parts[0] == "GS1" and third.isascii() and third.isdigit():
            return third
        m = re.match(r"^s(\d+)", third)
        if m:
            return m.group(1)
    return None


def _value(v: Any) -> str | int | float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return v
    text = str(v).strip()
    return text[:MAX_VALUE] if text else None


def event_names(record: CallRecord, export: Ga4Export) -> list[str]:
    overrides = dict(export.outcome_events)
    names = []
    main = overrides.get(record.outcome or "failed", export.event)
    if main:
        names.append(main)
    if record.qualified and export.qualified_event:
        names.append(export.qualified_event)
    return names[:MAX_EVENTS]


def ga4_body(record: CallRecord, export: Ga4Export) -> bytes | str:
    """The Measurement Protocol body for an ended call, or why none is sent."""
    session = session_of(record)
    client_id = ga_client_id(session.client_id if session else None)
    if client_id is None:
        return NO_CLIENT_ID
    names = event_names(record, export)
    if not names:
        return "no event configured for this outcome"
    params: dict[str, Any] = {
        "outcome": record.outcome,
        "qualified": record.qualified,
        "duration": round(record.talk_seconds or 0),
        "ring_seconds": round(record.ring_seconds or 0),
        "first_time_caller": record.first_time_caller,
        "tracking_number": record.did,
        "attribution": record.attribution.kind if record.attribution else None,
        "channel": channel_of(record),
        "source": source_of(record),
        "medium": medium_of(record),
        "campaign": session.utm_campaign if session else None,
        "term": session.utm_term if session else None,
        "call_id": record.id,
    }
    sid = ga_session_id(getattr(session, "ga_session_id", None))
    if sid is not None:
        params["session_id"] = sid
        params["engagement_time_msec"] = 1
    clean = {k: val for k, v in params.items() if (val := _value(v)) is not None}
    clean = dict(list(clean.items())[:MAX_PARAMS])
    doc = {
        "client_id": client_id,
        "timestamp_micros": int(started_ts(record) * 1_000_000),
        "events": [{"name": name, "params": clean} for name in names],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True, slots=True)
class Ga4Destination:
    export: Ga4Export
    kind: str = "ga4"
    batch: int = 1  # the events of one request share one client id: one call each
    concurrency: int | None = None

    @property
    def key(self) -> str:
        return self.export.ref

    def prepare(self, rows: Sequence[WebhookDelivery], now: float) -> Prepared:
        row = rows[0]
        try:
            when = json.loads(row.body)["timestamp_micros"] / 1_000_000
        except (ValueError, KeyError, TypeError):
            when = row.created_at
        if now - when > WINDOW:
            return Prepared(None, skip=[(row, TOO_OLD)])
        query = urlencode({"measurement_id": self.export.measurement_id,
                           "api_secret": self.export.api_secret})
        url = f"{self.export.base_url.rstrip('/')}/mp/collect?{query}"
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        return Prepared(Request(url, row.body, headers, secrets=(self.export.api_secret,)),
                        [row])

    def accepted(self, status: int, body: bytes) -> str | None:
        # GA answers 2xx even for events it drops; only the debug endpoint validates
        return None if 200 <= status < 300 else http_error(status, body)
