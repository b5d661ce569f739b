"""The tracking domain over a store: visitor sessions, attribution, call records.

Thin by intent: which number a visitor gets is `allocator`'s business (behind the
store), who a call belongs to is `attribution`'s. What lives here is the fail-open
policy: a visitor whose request the store cannot serve sees the default number, an
attribution the store cannot answer is `none` with the reason, and a call record the
store cannot take waits in memory until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from calltrackd import ids
from calltrackd.backoff import Backoff
from calltrackd.store.base import Store
from calltrackd.tracking import attribution as attr
from calltrackd.tracking import visits
from calltrackd.tracking.allocator import match_pool
from calltrackd.tracking.confidence import DelayLearner, Learners
from calltrackd.tracking.model import (
    Attribution,
    CallRecord,
    Hold,
    LastVisit,
    SessionAnswer,
    SessionInput,
    Tracker,
    VisitorSession,
    WebhookDelivery,
)
from calltrackd.tracking.sources import RULES, Rules, Source

log = structlog.get_logger(__name__)

_SESSION_ID = re.compile(r"s_[A-Za-z0-9_-]{22}")
PENDING_LIMIT = 100_000
REBUILD_DAYS = 7.0  # the call records a restart learns the delay models from
REBUILD_TIMEOUT = 15.0  # seconds the rebuild may take; the prior serves the rest


def new_session_id() -> str:
    return ids.session_id()  # 128 random bits, 22 characters


@dataclass(frozen=True, slots=True)
class _Pending:
    record: CallRecord  # the newest version of the CDR
    deliveries: tuple[WebhookDelivery, ...]  # every delivery not yet written, in order


def _load_rules(tracker: Tracker) -> Rules:
    # checked when the configuration was read; a file broken since then is logged and the
    # packaged rules serve until it is fixed and reloaded
    assert tracker.source_rules is not None
    try:
        return Rules.load(Path(tracker.source_rules))
    except (OSError, ValueError) as exc:
        log.error("tracking.source_rules_unreadable", tracker=tracker.id, error=str(exc))
        return RULES


_Utm = tuple[str | None, str | None, str | None, str | None, str | None]


def _utm(v: SessionInput | VisitorSession) -> _Utm:
    return v.utm_source, v.utm_medium, v.utm_campaign, v.utm_term, v.utm_content


class TrackingService:
    def __init__(
        self,
        store: Store,
        trackers: Sequence[Tracker],
        clock: Callable[[], float] = time.time,
        *,
        pending_limit: int = PENDING_LIMIT,
    ) -> None:
        self.store = store
        self._clock = clock
        self._pending_limit = pending_limit
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._inflight: set[str] = set()
        self._kick = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._synced: tuple[Tracker, ...] | None = None
        self.dropped_records = 0  # CDRs given up because the pending queue was full
        self.delay_models = Learners()  # per tracker: when its callers call (confidence)
        self.update_trackers(trackers)

    # --- configuration -----------------------------------------------------------------

    def update_trackers(self, trackers: Sequence[Tracker]) -> None:
        """Take a new configuration; the store's pools follow before the next request."""
        self._trackers = tuple(trackers)
        self._by_id = {t.id: t for t in self._trackers}
        self._by_key = {t.public_key: t for t in self._trackers}
        self._rules = {t.id: _load_rules(t) for t in self._trackers if t.source_rules}

    def rules(self, tracker: Tracker) -> Rules:
        """The traffic-source rules of a tracker: its `source_rules` file before the
        packaged ones, or the packaged ones."""
        return self._rules.get(tracker.id, RULES)

    @property
    def trackers(self) -> tuple[Tracker, ...]:
        return self._trackers

    def tracker(self, tracker_id: str) -> Tracker | None:
        return self._by_id.get(tracker_id)

    def tracker_by_key(self, public_key: str) -> Tracker | None:
        return self._by_key.get(public_key)

    async def start(self) -> None:
        """Bring the store's pools in line with the configuration (after `store.open`)."""
        await self.sync_pools()

    async def run_rebuild(self, stop: asyncio.Event) -> None:
        """The worker that rebuilds the trackers' delay models from their stored calls
        once, beside the running daemon (calls are taken meanwhile, their confidences
        from the prior), in at most `REBUILD_TIMEOUT` s; never raises."""
        try:
            async with asyncio.timeout(REBUILD_TIMEOUT):
                await self.rebuild_delay_models()
        except Exception as exc:  # the prior serves: confidences are rougher, calls go on
            log.warning("tracking.delay_models_not_rebuilt", error=repr(exc))

    async def rebuild_delay_models(self, days: float = REBUILD_DAYS) -> None:
        """Each tracker's delay model (confidence.py), learned again from the call
        records and visits of its last `days` days, oldest first: the model lives in
        memory and a restart would otherwise start from the prior."""
        now = self._clock()
        start, end = now - days * 86400, now + 1
        since, until = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        for tracker in self._trackers:
            if not tracker.pools:
                continue
            learner = DelayLearner(tracker.reservation_ttl)  # installed once complete
            visits = await self.store.visits(tracker.id, start, end)
            learner.observe_visits((v.first_seen, v.last_seen) for v in visits)
            records: list[CallRecord] = []
            cursor = None
            while True:
                page, cursor = await self.store.list_calls(tracker.id, since, until,
                                                           limit=1000, cursor=cursor)
                records += page
                if not cursor:
                    break
            records.sort(key=lambda r: (r.started_at, r.id))
            for r in records:
                a = r.attribution
                if a is None or a.error or not attr.is_pool_number(tracker, r.did):
                    continue  # as live: only calls to pool numbers the store answered for
                seen = a.session.last_seen if a.session is not None else 0.0
                if a.kind in ("dynamic", "expired") and a.session is None:
                    continue
                learner.observe_record(a.kind, a.confidence or 0.0, seen,
                                       r.started_at.timestamp(), tracker.attribution_grace)
            self.delay_models.put(tracker.id, tracker.reservation_ttl, learner)
            log.info("tracking.delay_model_rebuilt", tracker=tracker.id, calls=learner.calls,
                     days=days)

    async def sync_pools(self) -> None:
        """Make the store's pools those of the configuration (also done lazily)."""
        if self._synced is self._trackers:
            return
        async with self._sync_lock:
            target = self._trackers
            if self._synced is not target:
                await self.store.sync_pools(target)
                self._synced = target

    # --- visitor sessions --------------------------------------------------------------

    async def create_session(
        self, tracker: Tracker, fields: SessionInput, session_id: str | None, now: float
    ) -> SessionAnswer:
        """A number for a visitor: the one its live visit holds, a free pool number (the
        one a returning visitor held last, when free), or the default number. An arrival
        from a new source starts a new visit (tracking/visits.py). Never raises for a
        store failure (default number)."""
        try:
            await self.sync_pools()
            fields = visits.with_landing_utm(fields)
            rules = self.rules(tracker)
            arrival = visits.classify_input(fields, rules)
            current = None
            if session_id and _SESSION_ID.fullmatch(session_id):
                found = await self.store.get_session(session_id)
                if found is not None and found.tracker == tracker.id:
                    current = found
            if current is not None and not visits.starts_new_visit(current, fields, arrival,
                                                                   rules):
                return await self._continue(tracker, current, fields.custom, now)
            keys = visits.visitor_keys(fields.client_id, fields.ym_uid, fields.visitor_id)
            last, last_session = await self._returning(tracker, keys, now)
            if (current is None and last_session is not None
                    and last_session.last_seen + tracker.reservation_ttl > now
                    and not visits.starts_new_visit(last_session, fields, arrival, rules)):
                # the visitor's visit is still on (a new tab, the same ad again): it goes on
                return await self._continue(tracker, last_session, fields.custom, now)
            session = self._new_session(tracker, fields, arrival, last_session, now, rules)
            previous = current.id if current is not None else (last.session_id if last else None)
            hold = await self._reserve(tracker, session, now, last, previous)
            if current is not None:
                await self.store.release(current.id, now)  # no-op when handed over
            await self.store.create_session(session, dynamic=hold is not None)
            if keys:
                number = hold.number if hold else (last.number if last else None)
                await self.store.note_visit(tracker.id, keys, LastVisit(session.id, number, now),
                                            tracker.returning_window)
            return self._answer(tracker, session.id, hold, now, attr.overflow_for(tracker, session))
        except Exception as exc:
            log.warning("tracking.session_failed", tracker=tracker.id, error=repr(exc))
            return self._answer(tracker, session_id or new_session_id(), None, now)

    @staticmethod
    def _new_session(tracker: Tracker, fields: SessionInput, arrival: Source,
                     last: VisitorSession | None, now: float, rules: Rules) -> VisitorSession:
        source: str = arrival.source
        medium: str = arrival.medium
        channel: str = arrival.channel
        utm = _utm(fields)
        if last is not None and visits.inherits(arrival, last, rules):
            # a direct return keeps the last non-direct source, campaign and keyword
            source, medium, channel = visits.session_source(last, rules)
            utm = _utm(last)
        return VisitorSession(
            new_session_id(), tracker.id, fields.client_id, fields.ym_uid, *utm,
            fields.referrer, fields.landing_page, dict(fields.custom or {}), now, now,
            source, medium, channel, fields.visitor_id, fields.ga_session_id)

    async def _returning(self, tracker: Tracker, keys: list[str], now: float
                         ) -> tuple[LastVisit | None, VisitorSession | None]:
        """The visitor's last visit within the tracker's `returning_window`; (None, None)
        when unknown, or when the store could not say in time (the visitor is then served
        as a new one: a lookup must not cost them a number)."""
        if not keys:
            return None, None
        try:
            last = await self.store.last_visit(tracker.id, keys)
            if last is None:
                return None, None
            session = await self.store.get_session(last.session_id)
        except Exception as exc:
            log.warning("tracking.returning_lookup_failed", tracker=tracker.id, error=repr(exc))
            return None, None
        seen = max(last.at, session.last_seen if session else 0.0)
        if now - seen > tracker.returning_window:
            return None, None
        if session is not None and session.tracker != tracker.id:
            session = None
        return last, session

    async def ping(self, session_id: str, custom: dict[str, Any] | None = None
                   ) -> SessionAnswer | None:
        """The visitor is still active: extend its reservation (or find it a number
        again), and take the page's newest `custom`. None for an unknown session; store
        failures raise."""
        if not _SESSION_ID.fullmatch(session_id):
            return None
        await self.sync_pools()
        session = await self.store.get_session(session_id)
        tracker = self._by_id.get(session.tracker) if session else None
        if session is None or tracker is None:
            return None
        return await self._continue(tracker, session, custom, self._clock())

    async def _continue(self, tracker: Tracker, session: VisitorSession,
                        custom: dict[str, Any] | None, now: float) -> SessionAnswer:
        if custom is not None and custom != session.custom:
            session = replace(session, custom=dict(custom))
            await self.store.update_session(session)
        return await self._refresh(tracker, session, now)

    async def _refresh(
        self, tracker: Tracker, session: VisitorSession, now: float
    ) -> SessionAnswer:
        hold = await self.store.renew(session.id, now, tracker.reservation_ttl)
        if hold is None:
            hold = await self._reserve(tracker, session, now)
            keys = visits.keys_of(session)
            if hold is not None and keys:
                await self.store.note_visit(tracker.id, keys,
                                            LastVisit(session.id, hold.number, now),
                                            tracker.returning_window)
        await self.store.touch_session(session.id, now, dynamic=hold is not None)
        return self._answer(tracker, session.id, hold, now, attr.overflow_for(tracker, session))

    async def _reserve(self, tracker: Tracker, session: VisitorSession, now: float,
                       last: LastVisit | None = None, previous: str | None = None
                       ) -> Hold | None:
        source, medium, channel = visits.session_source(session, self.rules(tracker))
        pool = match_pool(tracker.pools, source, medium, channel)
        if pool is None:
            return None
        if last is not None and last.number is not None and last.number in pool.numbers:
            # the number this visitor held last, when it is free (or still theirs)
            hold = await self.store.reserve_number(
                tracker.id, pool.name, last.number, session.id, now, tracker.reservation_ttl,
                previous)
            if hold is not None:
                return hold
        return await self.store.reserve(
            tracker.id, pool.name, session.id, now, tracker.reservation_ttl
        )

    @staticmethod
    def _answer(tracker: Tracker, session_id: str, hold: Hold | None, now: float,
                overflow: str | None = None) -> SessionAnswer:
        if hold is None:  # the snippet asks again when this passes: a number may be free
            return SessionAnswer(session_id, overflow or tracker.default_number, "default",
                                 now + tracker.reservation_ttl)
        return SessionAnswer(session_id, hold.number, "dynamic", hold.until)

    async def export_gauges(self, metrics: GaugeSink) -> None:
        """Pool numbers by state, last hour's coverage per tracker (NaN without
        visitors), and the CDR backlog."""
        now = self._clock()
        metrics.cdr_backlog.set(len(self._pending))
        for p in await self.store.pool_stats(now):
            for state, count in (("free", p.free), ("reserved", p.reserved),
                                 ("cooling", p.cooling)):
                metrics.pool_numbers.labels(p.tracker, p.pool, state).set(count)
        seen: dict[str, list[int]] = {t.id: [0, 0] for t in self._trackers}
        for v in await self.store.visitor_stats(since=datetime.fromtimestamp(now - 3600, UTC)):
            if v.tracker in seen:
                seen[v.tracker][0] += v.visitors
                seen[v.tracker][1] += v.dynamic
        for tracker_id, (visitors, dynamic) in seen.items():
            metrics.coverage.labels(tracker_id).set(dynamic / visitors if visitors else math.nan)

    # --- calls -------------------------------------------------------------------------

    async def attribute(
        self, tracker: Tracker, did: str, caller: str, now: float
    ) -> tuple[Attribution, bool | None]:
        """Who a call to `did` belongs to, and whether the caller is new to the tracker.

        Never raises for a store failure: the attribution is then `none` with the reason
        in `error`, and first_time_caller None. Callers bound the time (asyncio.timeout).
        """
        try:
            await self.sync_pools()
            current: Hold | None = None
            last: Hold | None = None
            history: list[Hold] = []
            if attr.is_pool_number(tracker, did):
                current, last = await self.store.holders(did, now)
                history = await self.store.hold_history(did, now)
            sessions: dict[str, VisitorSession] = {}
            for hold in (current, last):
                if hold is not None and hold.session_id not in sessions:
                    session = await self.store.get_session(hold.session_id)
                    if session is not None:
                        sessions[session.id] = session
            called_before = (
                None if attr.is_anonymous(caller)
                else await self.store.caller_seen(tracker.id, caller)
            )
        except Exception as exc:
            log.warning("tracking.attribution_failed", did=did, error=repr(exc))
            return Attribution("none", error=f"store: {type(exc).__name__}"), None
        learner = self.delay_models.get(tracker.id, tracker.reservation_ttl)
        result = attr.attribute(did, caller, now, tracker, current, last, sessions,
                                called_before, history, learner.model)
        if history or current or last:  # the call teaches the tracker's delay model
            holds = [h for h in (current, last, *history) if h is not None]
            learner.observe_holds(holds, now)
            learner.observe_call(holds, now)
        return result

    async def record_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        """Write the CDR and its webhook events; never raises.

        When the store fails the record waits in memory (the newest version of a CDR
        wins; its deliveries accumulate) and `run_flusher` writes it once the store is
        back. Versions of one CDR are written in the order they were recorded.
        """
        try:
            self._enqueue(record, deliveries)
            if record.id not in self._inflight:  # else that writer picks this version up
                await self._write(record.id)
        except Exception:  # a bug here must not end the call's chain
            log.exception("tracking.record_call_failed", call=record.id)

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109  (app.py calls it so)
        """Try to write the deferred CDRs for up to `timeout` seconds (at shutdown);
        True when none is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._pending:
                    if not await self._flush_once():
                        await asyncio.sleep(0.1)
                    elif self._pending:  # only ones another writer is writing now
                        await asyncio.sleep(0.01)
        return not self._pending

    @property
    def pending_records(self) -> int:
        """CDRs accepted but not yet in the store."""
        return len(self._pending)

    def _enqueue(self, record: CallRecord, deliveries: Sequence[WebhookDelivery]) -> None:
        old = self._pending.get(record.id)
        merged = tuple(deliveries)
        if old is not None:
            known = {d.id for d in old.deliveries}
            merged = old.deliveries + tuple(d for d in deliveries if d.id not in known)
        self._pending[record.id] = _Pending(record, merged)
        while len(self._pending) > self._pending_limit:
            lost, _ = self._pending.popitem(last=False)
            self.dropped_records += 1
            log.error("tracking.record_dropped", call=lost, reason="pending queue full")

    async def _write(self, call_id: str) -> bool:
        """Write the pending versions of one CDR; False when the store failed."""
        self._inflight.add(call_id)
        try:
            while (entry := self._pending.get(call_id)) is not None:
                try:
                    await self.store.save_call(entry.record, entry.deliveries)
                except Exception as exc:
                    log.warning("tracking.record_deferred", call=call_id, error=repr(exc),
                                pending=len(self._pending))
                    self._kick.set()
                    return False
                if self._pending.get(call_id) is entry:  # else a newer version came in
                    del self._pending[call_id]
            return True
        finally:
            self._inflight.discard(call_id)

    async def _flush_once(self) -> bool:
        for call_id in list(self._pending):
            if call_id not in self._inflight and not await self._write(call_id):
                return False
        return True

    async def run_flusher(
        self, stop: asyncio.Event, *, first_delay: float = 0.5, max_delay: float = 30.0
    ) -> None:
        """Write deferred CDRs until `stop` is set, backing off while the store fails;
        one last attempt on stop."""
        backoff = Backoff(first_delay, max_delay)
        failures = 0
        while not stop.is_set():
            self._kick.clear()
            if self._pending and not await self._flush_once():
                failures += 1
                await _wait_any(stop, None, backoff.compute(failures))
                continue
            failures = 0
            await _wait_any(stop, self._kick, 1.0)
        if self._pending and not await self._flush_once():
            log.error("tracking.records_lost_on_stop", count=len(self._pending))


class _Settable(Protocol):
    def set(self, value: float) -> None: ...


class _Labelled(Protocol):
    def labels(self, *values: str) -> _Settable: ...


class GaugeSink(Protocol):
    """The gauges `export_gauges` sets (calltrackd.metrics.Metrics has them)."""

    @property
    def pool_numbers(self) -> _Labelled: ...
    @property
    def coverage(self) -> _Labelled: ...
    @property
    def cdr_backlog(self) -> _Settable: ...


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, other) if e is not None]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
