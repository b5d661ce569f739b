"""What the exports read from a call record, defensively: fields that other parts of the
record gain over time (`source`, `medium`, `channel` of the attribution and the session,
the session's `ga_session_id`) are used when present and never required."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from calltrackd.tracking.model import CallRecord, VisitorSession

__all__ = ["call_link", "channel_of", "medium_of", "session_of", "source_of", "started_ts",
           "text_or_none"]


def text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def session_of(record: CallRecord) -> VisitorSession | None:
    att = record.attribution
    return att.session if att is not None else None


def _attr(record: CallRecord, name: str) -> str | None:
    """The attribution's top-level field, else the session's."""
    att = record.attribution
    if att is None:
        return None
    value = text_or_none(getattr(att, name, None))
    if value is None and att.session is not None:
        value = text_or_none(getattr(att.session, name, None))
    return value


def channel_of(record: CallRecord) -> str | None:
    return _attr(record, "channel")


def source_of(record: CallRecord) -> str | None:
    s = session_of(record)
    return _attr(record, "source") or (text_or_none(s.utm_source) if s else None)


def medium_of(record: CallRecord) -> str | None:
    s = session_of(record)
    return _attr(record, "medium") or (text_or_none(s.utm_medium) if s else None)


def started_ts(record: CallRecord) -> float:
    started = record.started_at
    return (started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()


def call_link(public_url: str | None, call_id: str) -> str | None:
    """The call's page in the dashboard, when `[http] public_url` is set."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/ui/#/calls/{call_id}"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
