"""The record codec every backend shares: JSON text for sessions and call records (any
backend stores a `CallRecord` and reads back an equal one), the guard for text UTF-8 cannot
carry, the `list_calls` cursor and call filter, and the CRM fields stored apart.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any, overload

import structlog

from calltrackd import jsonx
from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession
from calltrackd.tracking.reports import call_fact


def timestamp(dt: datetime) -> float:
    """Unix seconds; a naive datetime is taken as UTC."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


_SESSION_FIELDS = tuple(f.name for f in fields(VisitorSession))


def session_to_dict(session: VisitorSession) -> dict[str, Any]:
    # by hand: dataclasses.asdict deep-copies and costs 11 us a session (0.9 us here),
    # and a call's record is encoded at each of its steps
    data = {name: getattr(session, name) for name in _SESSION_FIELDS}
    data["custom"] = dict(session.custom)
    return data


_SESSION_NAMES = frozenset(_SESSION_FIELDS)


def session_from_dict(data: dict[str, Any]) -> VisitorSession:
    # keys this build does not know (a newer one wrote them) are left out; missing ones
    # (an older one wrote it: no source, medium, channel, ...) take their defaults
    if not _SESSION_NAMES.issuperset(data):
        data = {k: v for k, v in data.items() if k in _SESSION_NAMES}
    return VisitorSession(**data)


def session_stats_source(session: VisitorSession) -> tuple[str | None, str | None]:
    """(source, medium) a session is counted under in statistics: as classified, or its
    UTM tags for sessions stored before classification existed; lowercased. Direct is
    (None, None), as a session without UTM tags always was."""
    if session.source == "(direct)":
        return None, None
    src = session.source if session.source is not None else session.utm_source
    med = session.medium if session.source is not None else session.utm_medium
    return (src.strip().lower() if src else None, med.strip().lower() if med else None)


def encode_session(session: VisitorSession) -> str:
    return jsonx.dumps(session_to_dict(session))


def decode_session(text: str) -> VisitorSession:
    return session_from_dict(json.loads(text))


def encode_call(record: CallRecord) -> str:
    att = record.attribution
    data: dict[str, Any] = {
        "id": record.id,
        "tracker": record.tracker,
        "did": record.did,
        "caller": record.caller,
        "carrier": record.carrier,
        "started_at": record.started_at.isoformat(),
        "answered_at": record.answered_at.isoformat() if record.answered_at else None,
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "ring_seconds": record.ring_seconds,
        "talk_seconds": record.talk_seconds,
        "outcome": record.outcome,
        "sip_code": record.sip_code,
        "hangup_by": record.hangup_by,
        "target": record.target,
        "first_time_caller": record.first_time_caller,
        "qualified": record.qualified,
        "tags": list(record.tags),
        "lead_status": record.lead_status,
        "value": record.value,
        "attribution": None
        if att is None
        else {
            "kind": att.kind,
            "channel": att.channel,
            "error": att.error,
            "session": session_to_dict(att.session) if att.session else None,
            "confidence": att.confidence,
            "pool": att.pool,
        },
        "reason": record.reason,
        "recording": record.recording,
        "media": record.media,
    }
    # default=str: a custom value JSON cannot carry is stored as text, never refused
    return jsonx.dumps(data)


def decode_call(text: str) -> CallRecord:
    data = json.loads(text)
    att = data.pop("attribution")
    started = _dt(data.pop("started_at"))
    assert started is not None
    data["tags"] = tuple(data.get("tags") or ())
    return CallRecord(
        started_at=started,
        answered_at=_dt(data.pop("answered_at")),
        ended_at=_dt(data.pop("ended_at")),
        attribution=None
        if att is None
        else Attribution(
            kind=att["kind"],
            channel=att["channel"],
            error=att["error"],
            session=session_from_dict(att["session"]) if att["session"] else None,
            confidence=att.get("confidence"),
            pool=att.get("pool"),
        ),
        **{k: v for k, v in data.items() if k in _CALL_FIELDS},  # older/newer builds' keys
    )


_CALL_FIELDS = frozenset(f.name for f in fields(CallRecord))


# --- text every backend can write ----------------------------------------------------
# A str holding a lone surrogate (JSON allows "\ud800"; a browser can send one) has no
# UTF-8 form: SQLite and Redis refuse it, and with it the whole batch it came in. The HTTP
# edge refuses such input; this is the store's own guard for anything that got past it:
# the record is written without the field, and the field is named in the log.

_log_text = structlog.get_logger("calltrackd.store")


def text_ok(text: str) -> bool:
    """Can UTF-8 carry it (no lone surrogate)?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _session_strings(s: VisitorSession) -> list[str]:
    out = [v for name in _SESSION_FIELDS if isinstance(v := getattr(s, name), str)]
    for k, v in s.custom.items():
        out.append(str(k))
        if isinstance(v, str):
            out.append(v)
    return out


def storable_session(session: VisitorSession, record: str | None = None) -> VisitorSession:
    """The session, or a copy without the fields UTF-8 cannot carry (logged)."""
    if text_ok("".join(_session_strings(session))):
        return session  # the common case: one join and one check
    dropped: list[str] = []
    changes: dict[str, Any] = {}
    for name in _SESSION_FIELDS:
        value = getattr(session, name)
        if isinstance(value, str) and not text_ok(value) and name not in ("id", "tracker"):
            changes[name] = None
            dropped.append(name)
        elif isinstance(value, str) and not text_ok(value):  # ids are ours: made safe
            changes[name] = value.encode("utf-8", "replace").decode()
            dropped.append(name)
    custom = {k: v for k, v in session.custom.items()
              if text_ok(str(k)) and (not isinstance(v, str) or text_ok(v))}
    if len(custom) != len(session.custom):
        changes["custom"] = custom
        dropped.append("custom")
    _log_text.warning("store.field_dropped", session=_safe(session.id), call=record,
                      fields=dropped, reason="not valid Unicode text (a lone surrogate)")
    return dataclasses.replace(session, **changes)


def storable_call(record: CallRecord) -> CallRecord:
    """The record, or a copy without the fields UTF-8 cannot carry (logged): a record is
    written without a bad field rather than not at all."""
    att = record.attribution
    own = [record.id, record.tracker, record.did, record.caller, record.target or "",
           *((att.kind, att.channel or "", att.error or "") if att else ())]
    session = att.session if att else None
    safe_session = storable_session(session, _safe(record.id)) if session else None
    if text_ok("".join(own)) and safe_session is session:
        return record
    changes: dict[str, Any] = {}
    for name in ("id", "tracker", "did", "caller", "target"):
        value = getattr(record, name)
        if isinstance(value, str) and not text_ok(value):
            changes[name] = _safe(value)
    if att is not None:
        changes["attribution"] = dataclasses.replace(
            att, channel=_safe(att.channel), error=_safe(att.error), session=safe_session)
    if set(changes) - {"attribution"}:
        _log_text.warning("store.field_dropped", call=_safe(record.id),
                          fields=sorted(set(changes) - {"attribution"}),
                          reason="not valid Unicode text (a lone surrogate), replaced")
    return dataclasses.replace(record, **changes)


@overload
def _safe(text: str) -> str: ...
@overload
def _safe(text: None) -> None: ...
def _safe(text: str | None) -> str | None:
    """The text with what UTF-8 cannot carry replaced by "?"."""
    if text is None or text_ok(text):
        return text
    return text.encode("utf-8", "replace").decode()


def decode_text(value: bytes) -> str:
    """Stored bytes as text, never raising (defensive: bytes that are not UTF-8 become
    U+FFFD rather than an error for the whole query)."""
    return value.decode("utf-8", "replace")


# `list_calls(where=...)`: a call's values as the reports show them (`call_fact`): the
# facts' own fields, one of the call's tags, and the carrier entry it came in by
FACT_FILTERS = ("channel", "source", "campaign")
CALL_FILTERS = (*FACT_FILTERS, "tag", "carrier")


def call_matches(record: CallRecord, where: Mapping[str, str] | None) -> bool:
    """The record has every value of `where` (keys of CALL_FILTERS; `tag`: one of its
    tags; `carrier`: its own), compared exactly with what `GET /v1/reports` groups it
    under."""
    if not where:
        return True
    fact = call_fact(record)
    return all(value in record.tags if key == "tag"
               else record.carrier == value if key == "carrier"
               else getattr(fact, key) == value
               for key, value in where.items())


MAX_PAGE = 1000  # rows list_calls and list_deliveries answer at the most


def page_size(limit: int) -> int:
    """A page's `limit` as asked, between 1 and `MAX_PAGE`."""
    return max(1, min(limit, MAX_PAGE))


def encode_cursor(started_ts: float, call_id: str) -> str:
    """The opaque `next_cursor` of `list_calls`: the last row's sort key."""
    raw = json.dumps([started_ts, call_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        ts, call_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(ts, int | float) and isinstance(call_id, str):
            return float(ts), call_id
    except (ValueError, TypeError):
        pass
    raise ValueError("malformed cursor")


# --- CRM updates and retention, shared by the backends ---------------------------------


def crm_json(record: CallRecord) -> str:
    """The CRM fields of a record as stored apart from the CDR."""
    return json.dumps({"tags": list(record.tags), "lead_status": record.lead_status,
                       "value": record.value}, separators=(",", ":"))


def with_crm(record: CallRecord, stored: str | bytes | None) -> CallRecord:
    """The record with the CRM fields stored by `update_call` (if any)."""
    if not stored:
        return record
    crm = json.loads(stored)
    return replace(record, tags=tuple(crm["tags"]), lead_status=crm["lead_status"],
                   value=crm["value"])
