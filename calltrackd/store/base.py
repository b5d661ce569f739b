"""The one storage interface, with the record codec its backends share.

Backends: `sqlite/` (embedded, one node) and `redis/` (shared by several nodes), each
in four parts: plumbing, reservations, records, outbox. Every method is async; a method
raises (any exception, typically `StoreError`) when the store cannot do it — callers that
must not fail (a call in progress) catch.
Times are unix seconds (float) except CDR filters, which follow `CallRecord` (datetimes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol, overload

import structlog

from calltrackd import jsonx
from calltrackd.tracking.model import (
    Attribution,
    CallRecord,
    Hold,
    LastVisit,
    Tracker,
    UsageBucket,
    VisitorSession,
    WebhookDelivery,
)
from calltrackd.tracking.reports import (
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitGroup,
    call_fact,
)


class StoreError(Exception):
    """The store is unavailable or refused an operation."""


@dataclass(frozen=True, slots=True)
class CallStats:
    """Calls of one tracker and source (`/v1/stats`); a source is the attribution's
    kind with its channel (static) or the session's utm_source/utm_medium."""

    tracker: str
    kind: str  # attribution kind; "none" also for calls without attribution
    channel: str | None
    utm_source: str | None
    utm_medium: str | None
    calls: int
    answered: int
    missed: int  # ended without an answer (busy, no_answer, cancelled, failed)
    qualified: int
    first_time: int


@dataclass(frozen=True, slots=True)
class VisitorStats:
    """Visitor sessions of one tracker and source: all, and those given a pool number."""

    tracker: str
    utm_source: str | None
    utm_medium: str | None
    visitors: int
    dynamic: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    tracker: str
    pool: str
    size: int
    free: int
    reserved: int
    cooling: int
    peak: int  # peak concurrent reservations since `since` (hour granularity)
    peak_all_time: int
    shortfall: int  # requests since `since` that found the pool empty


# --- holder history, visits and confidences (attribution confidence, pool simulator) ---

HISTORY_KEEP = 4 * 86400.0  # seconds an ended hold stays in a number's history
HISTORY_MAX = 256  # holds kept per number (the newest)


@dataclass(frozen=True, slots=True)
class Visit:
    """One visitor session's span: first request and last activity (unix seconds)."""

    tracker: str
    first_seen: float
    last_seen: float
    utm_source: str | None
    utm_medium: str | None


@dataclass(frozen=True, slots=True)
class AttributionStats:
    """Calls of one tracker, pool and attribution kind with their summed confidence."""

    tracker: str
    pool: str | None
    kind: str
    calls: int
    scored: int  # calls whose record carries a confidence
    confidence: float  # their sum


# --- end of holder history -------------------------------------------------------------


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None:
        """Return when the store answers; raise otherwise."""

    # --- visitor sessions ------------------------------------------------------------
    async def create_session(self, session: VisitorSession, dynamic: bool) -> None:
        """Store a new session; `dynamic`: it was given a pool number (coverage)."""

    async def get_session(self, session_id: str) -> VisitorSession | None: ...
    async def touch_session(self, session_id: str, now: float, dynamic: bool = False) -> None:
        """Record activity (`last_seen`); `dynamic` marks that it now holds a pool number."""

    # --- visits: custom updates, returning visitors (tracking/visits.py) -------------
    async def update_session(self, session: VisitorSession) -> None:
        """Replace a stored session's data (the page's newer `custom`); `last_seen`
        only moves forward."""

    async def note_visit(self, tracker: str, keys: Sequence[str], visit: LastVisit,
                         keep: float) -> None:
        """Remember `visit` as the latest of the visitor known by each of `keys`
        ("v:<visitor_id>", "ga:<client id>", "ym:<ym_uid>") for `keep` seconds."""

    async def last_visit(self, tracker: str, keys: Sequence[str]) -> LastVisit | None:
        """The latest visit noted under any of `keys`."""

    async def reserve_number(
        self, tracker: str, pool: str, number: str, session_id: str, now: float, ttl: float,
        previous: str | None = None,
    ) -> Hold | None:
        """Atomically give the session this number of the pool until `now + ttl` when it
        is free (nobody holds it and its cool-down passed), or when it is held, or was
        held last, by `previous` (the same visitor's earlier session, whose hold ends).
        None: the number is taken or not the pool's."""
    # --- end of visits ---------------------------------------------------------------

    # --- reservations ----------------------------------------------------------------
    async def sync_pools(self, trackers: Sequence[Tracker]) -> None:
        """Make the store's pools those of the configuration (at start and on reload).

        Numbers keep their reservation state; numbers no longer configured lose it.
        """

    async def reserve(
        self, tracker: str, pool: str, session_id: str, now: float, ttl: float
    ) -> Hold | None:
        """Atomically give the session the pool's longest-idle free number until
        `now + ttl`, or renew the number it holds. None: no number free (shortfall)."""

    async def renew(self, session_id: str, now: float, ttl: float) -> Hold | None:
        """Extend the session's reservation, keeping its number (also a lapsed one
        nobody took since). None: the session holds nothing."""

    async def release(self, session_id: str, now: float) -> bool: ...
    async def holders(self, number: str, now: float) -> tuple[Hold | None, Hold | None]:
        """(current holder, last holder) of a pool number, as of `now`."""

    # --- caller history --------------------------------------------------------------
    async def caller_seen(self, tracker: str, caller: str) -> bool:
        """Has this caller called this tracker before (any recorded call)?"""

    async def record_caller(self, tracker: str, caller: str, now: float) -> None:
        """Note a call from the caller; `save_call` does this for every record too."""

    # --- call records and the webhook outbox -----------------------------------------
    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        """Insert or update the CDR (by id) and add the outbox rows, in one transaction.

        Idempotent: a delivery whose id is already stored is left as it is. Once this
        returns, the record and deliveries survive a process kill.
        """

    async def get_call(self, call_id: str) -> CallRecord | None: ...
    async def list_calls(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        """CDRs newest first (by started_at) with `since <= started_at < until` and the
        values of `where` (`call_matches`), and the opaque cursor of the next page.
        Raises ValueError for a malformed cursor."""

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        """Pending deliveries with `next_attempt_at <= now`, longest due first; none whose
        `url` is in `exclude_urls` (destinations the worker has enough of)."""

    async def mark_delivered(self, delivery_id: str, now: float) -> None: ...
    async def mark_delivered_many(self, delivery_ids: Sequence[str], now: float) -> None:
        """`mark_delivered` for several rows (one batched request) in one write."""

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...
    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None: ...
    async def list_deliveries(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[WebhookDelivery]:
        """Newest first; of one kind (webhook, ga4, metrica, telegram, slack) or all."""

    async def requeue(self, delivery_id: str, now: float) -> bool:
        """Make a failed (or pending) delivery due now; False if unknown or delivered."""

    async def pending_count(self) -> int: ...
    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        """Rows `due_deliveries` handed out that the caller will not send now: due again
        at once. A store without leases (SQLite) has nothing to do."""

    # --- statistics (/v1/stats) ------------------------------------------------------
    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]: ...
    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        """Sessions by `first_seen` in the window."""

    async def pool_stats(self, now: float, since: float | None = None) -> list[PoolStats]: ...
    async def pool_usage(self, tracker: str, pool: str, first_hour: int,
                         end_hour: int) -> list[UsageBucket]:
        """The pool's recorded hours in [first_hour, end_hour) (unix seconds // 3600),
        oldest first; an hour in which no number was taken has none."""

    # --- node liveness and crash recovery ----------------------------------------------
    # `node_id` (set before `open`) names this node in a store several nodes share; a
    # node's open calls are indexed under it so that a restart closes its own only.
    node_id: str

    async def heartbeat(self, now: float) -> None:
        """Write `now` as the last time this node was alive (also the health write probe)."""

    async def last_heartbeat(self) -> float | None:
        """This node's last heartbeat, None if it never wrote one."""

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        """This node's CDRs without an outcome that started before `started_before`."""
    # --- reports, spend, CRM updates, retention (GET /v1/reports, PUT /v1/spend) ------
    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        """Store the CRM fields of a stored call (`tags`, `lead_status`, `value` of
        `record`) and the outbox rows, in one transaction. `save_call` never changes
        these fields: a call's later steps keep what a CRM wrote."""

    async def report_calls(self, query: ReportQuery) -> list[CallGroup]:
        """The calls of the query, grouped as `reports.aggregate_calls` does."""

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        """Visitor counts of the query (visit dimensions only), by the visit's first hour."""

    async def put_spend(self, rows: Sequence[SpendRow]) -> None:
        """Insert or replace spend rows (key: tracker, day, source, medium, campaign)."""

    async def list_spend(
        self, tracker: str | None = None, since_day: str | None = None,
        until_day: str | None = None,
    ) -> list[SpendRow]:
        """Spend rows with `since_day <= day < until_day`, by tracker and day."""

    async def purge_calls(self, before: float) -> int:
        """Delete call records (with their report facts and CRM updates) that started
        before `before` (unix seconds); the number deleted."""

    # --- holder history (attribution confidence, the pool simulator) -----------------
    async def hold_history(self, number: str, now: float) -> list[Hold]:
        """The number's holds, newest first: the current one and those that ended within
        `HISTORY_KEEP` (at most `HISTORY_MAX`). Kept for every hold `reserve` and `renew`
        hand out."""

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        """The tracker's visitor sessions that started in [since, until), by start."""

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        """Calls by tracker, pool and kind with the sum of their confidences."""


# --- the record codec ------------------------------------------------------------------
# JSON text, so that any backend stores a CallRecord and reads back an equal one.


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


# `list_calls(where=...)`: a call's values as the reports show them (`call_fact`)
CALL_FILTERS = ("channel", "source", "campaign", "tag")


def call_matches(record: CallRecord, where: Mapping[str, str] | None) -> bool:
    """The record has every value of `where` (keys of CALL_FILTERS; `tag`: one of its
    tags), compared exactly with what `GET /v1/reports` groups it under."""
    if not where:
        return True
    fact = call_fact(record)
    return all(value in record.tags if key == "tag" else getattr(fact, key) == value
               for key, value in where.items())


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


RETENTION_INTERVAL = 3600.0  # seconds between purges of records past the retention


async def retention_loop(store: Store, retention: float,
                         interval: float = RETENTION_INTERVAL) -> None:
    """Delete call records older than `retention` seconds now and every `interval`
    (a failure is retried at the next turn). Runs until cancelled."""
    log = structlog.get_logger("calltrackd.store")
    while True:
        try:
            removed = await store.purge_calls(time.time() - retention)
            if removed:
                log.info("store.retention_purged", calls=removed, retention=retention)
        except Exception as exc:
            log.warning("store.retention_failed", error=repr(exc))
        await asyncio.sleep(interval)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
