"""The one storage interface (`Store`) and the types its answers share.

Backends: `sqlite/` (embedded, one node), `redis/` (shared by several nodes) and
`postgres/` (one node per database), each in parts: plumbing, reservations, records,
outbox. SQLite and PostgreSQL keep reservations and sessions in memory and write them
behind (`writebehind.py`); every backend stores records with the codec of `codec.py`.
Every method is async; a method raises (any exception, typically `StoreError`) when the
store cannot do it — callers that must not fail (a call in progress) catch.
Times are unix seconds (float) except CDR filters, which follow `CallRecord` (datetimes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

# what the HTTP edge checks with the store's own rules
from calltrackd.store.codec import CALL_FILTERS, text_ok
from calltrackd.tracking.model import (
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
)

__all__ = [
    "CALL_FILTERS", "HISTORY_KEEP", "HISTORY_MAX", "AttributionStats", "CallStats",
    "PoolStats", "Store", "StoreError", "Visit", "VisitorStats", "backfill_loop", "retention_loop",
    "stop_task", "text_ok",
]


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

    async def window_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[CallStats], list[AttributionStats]]:
        """`call_stats` and `attribution_stats` of one window together, as `/v1/stats`
        asks for them (a store that reads the CDRs themselves reads them once)."""

    # --- hunt round_robin (b2bua/rotation.py) ------------------------------------------
    async def rotate(self, key: str) -> int:
        """Count one more call of the rotation `key`, atomically for every node on this
        store, and return the count with it: 1 for the first call, then 2, 3, ..."""


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


BACKFILL_RETRY = 30.0  # seconds before a failed report backfill is tried again


async def backfill_loop(run: Callable[[], Awaitable[None]],
                        retry: float = BACKFILL_RETRY) -> None:
    """Report facts for the calls recorded before the store kept them: `run` (every batch,
    its progress kept in the store) until it returns; when it fails (the store away, the
    disk full) again after `retry` seconds. A background task of `open`."""
    log = structlog.get_logger("calltrackd.store")
    while True:
        try:
            await run()
            return
        except Exception as exc:
            log.warning("store.report_backfill_failed", error=repr(exc))
            await asyncio.sleep(retry)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
