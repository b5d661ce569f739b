"""Call hooks: what the B2BUA's calls become outside SIP — attribution, CDRs, webhook
events, metrics.

Every step runs off the packet path, in one chain per call (started → answered → ended
are written in order), and none can fail a call: attribution has a time budget and the
tracking service keeps records it cannot write yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from .aio import bounded
from .b2bua.call import CallInfo
from .tracking.attribution import qualified
from .tracking.model import Attribution, CallRecord, Tracker, WebhookDelivery
from .webhooks.payload import build_deliveries

if TYPE_CHECKING:
    from .metrics import Metrics
    from .tracking.service import TrackingService

log = structlog.get_logger("calltrackd.recorder")

ATTRIBUTION_BUDGET = 0.25  # seconds: a slow store must not delay the call's record
OutboxRowsFn = Callable[[str, CallRecord, Tracker, float], list[WebhookDelivery]]


class Recorder:
    def __init__(self, tracking: TrackingService, metrics: Metrics,
                 notify_webhooks: Callable[[list[WebhookDelivery]], None] = lambda rows: None,
                 outbox_rows: OutboxRowsFn | None = None) -> None:
        self.tracking = tracking
        self.metrics = metrics
        self.notify_webhooks = notify_webhooks
        # the outbox rows of a CDR change (webhooks; the app adds analytics and alerts)
        self.outbox_rows: OutboxRowsFn = outbox_rows or (
            lambda event, record, tracker, now: build_deliveries(
                event, record, tracker.webhooks, now))
        self._chains: dict[str, deque[tuple[Callable[[CallInfo, Any], Any], Any]]] = {}
        self.pending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crash_closed: set[str] = set()  # closed by this process: never twice

    # -- CallHooks ---------------------------------------------------------------------

    def call_started(self, call: CallInfo) -> None:
        self._chain(call, self._started)

    def call_forwarded(self, call: CallInfo, seconds: float) -> None:
        self.metrics.invite_seconds.observe(seconds)

    def call_answered(self, call: CallInfo) -> None:
        self._chain(call, self._answered)

    def call_ended(self, call: CallInfo) -> None:
        self.metrics.calls.labels(call.tracker.id, call.outcome or "failed").inc()
        self._chain(call, self._ended)

    def call_recording(self, call: CallInfo, recording: dict[str, Any]) -> None:
        """A recorded call's file is stored: the CDR gets `recording`, and endpoints
        subscribed to `call.recording` get the event (after the call's other steps)."""
        call.extra["recording"] = recording
        self._chain(call, self._recorded)

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) for finished calls' records to reach tracking."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=within)

    # -- crash recovery ----------------------------------------------------------------

    async def close_crashed(self, started_before: float, alive_until: float | None) -> int:
        """Close the calls a crash of this node left open (records without an outcome that
        started before this process did): `failed`, hung up by `system`, reason
        `restart`, ended at `alive_until` (the node's last heartbeat), and send their
        `call.ended` through the outbox. Raises when the store cannot be read (call again);
        the closed records themselves are never lost (tracking keeps them until written).
        """
        records = [r for r in await self.tracking.store.open_calls(started_before)
                   if r.id not in self._crash_closed]
        now = time.time()
        for record in records:
            self._crash_closed.add(record.id)
            tracker = self.tracking.tracker(record.tracker)
            closed = closed_by_restart(record, alive_until,
                                       tracker.target_call_min_seconds if tracker else None)
            # the same outbox rows as any call's end (webhooks, and what the app adds)
            deliveries = self.outbox_rows("call.ended", closed, tracker, now) if tracker else []
            self.metrics.calls.labels(record.tracker, "failed").inc()
            await self.tracking.record_call(closed, deliveries)
            if deliveries:
                self.notify_webhooks(deliveries)
        if records:
            log.warning("recorder.closed_after_crash", calls=len(records),
                        last_alive=(datetime.fromtimestamp(alive_until, UTC).isoformat()
                                    if alive_until else None))
        return len(records)

    # -- steps -------------------------------------------------------------------------

    def _chain(self, call: CallInfo, step: Callable[[CallInfo, Any], Any]) -> None:
        # snapshot now: the call object moves on while earlier steps are still writing
        snapshot = (call.answered_at, call.ended_at, call.outcome, call.sip_code,
                    call.hangup_by, call.target)
        queue = self._chains.get(call.id)
        if queue is not None:  # the call's writer task is still running: it takes this next
            queue.append((step, snapshot))
            return
        queue = self._chains[call.id] = deque([(step, snapshot)])

        async def run() -> None:
            # one task per call runs its steps in order (started → answered → ended)
            while queue:
                next_step, snap = queue.popleft()
                try:
                    await next_step(call, snap)
                except Exception:
                    log.exception("recorder.step_failed", call=call.id)
            del self._chains[call.id]

        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # once: each call asks getpid() on 3.11
        task = self._loop.create_task(run())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _started(self, call: CallInfo, snap: tuple[Any, ...]) -> None:
        if "attribution" in call.extra:  # routing waited for it already
            await self._save(call, snap, "call.started")
            return
        now = time.time()
        try:
            assert self._loop is not None
            attribution, first_time = await bounded(
                self._loop, self.tracking.attribute(call.tracker, call.did, call.caller, now),
                ATTRIBUTION_BUDGET)
        except Exception as exc:  # store down, too slow, or a bug: forward unattributed
            reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
            log.warning("recorder.attribution_failed", call=call.id, reason=reason)
            attribution, first_time = Attribution(kind="none", error=f"attribution {reason}"), None
        call.extra["attribution"] = attribution
        call.extra["first_time_caller"] = first_time
        await self._save(call, snap, "call.started")

    async def _answered(self, call: CallInfo, snap: tuple[Any, ...]) -> None:
        await self._save(call, snap, "call.answered")

    async def _ended(self, call: CallInfo, snap: tuple[Any, ...]) -> None:
        await self._save(call, snap, "call.ended")

    async def _recorded(self, call: CallInfo, snap: tuple[Any, ...]) -> None:
        await self._save(call, snap, "call.recording")

    async def _save(self, call: CallInfo, snap: tuple[Any, ...], event: str) -> None:
        record = self.record(call, snap)
        deliveries = self.outbox_rows(event, record, call.tracker, time.time())
        await self.tracking.record_call(record, deliveries)
        if deliveries:
            self.notify_webhooks(deliveries)

    @staticmethod
    def record(call: CallInfo, snap: tuple[Any, ...] | None = None) -> CallRecord:
        answered_at, ended_at, outcome, sip_code, hangup_by, target = snap or (
            call.answered_at, call.ended_at, call.outcome, call.sip_code, call.hangup_by,
            call.target)
        ring = talk = None
        if answered_at is not None or ended_at is not None:
            end = answered_at or ended_at
            ring = round((end - call.started_at).total_seconds(), 3)
        if ended_at is not None:
            talk = (round((ended_at - answered_at).total_seconds(), 3)
                    if answered_at is not None else 0.0)
        return CallRecord(
            id=call.id,
            tracker=call.tracker.id,
            did=call.did,
            caller=call.caller,
            carrier=call.carrier,
            started_at=call.started_at,
            answered_at=answered_at,
            ended_at=ended_at,
            ring_seconds=ring,
            talk_seconds=talk,
            outcome=outcome,
            sip_code=sip_code,
            hangup_by=hangup_by,
            target=target,
            first_time_caller=call.extra.get("first_time_caller"),
            qualified=(qualified(talk, call.tracker.target_call_min_seconds)
                       if ended_at is not None else None),
            attribution=call.extra.get("attribution"),
            reason=call.extra.get("reason"),
            recording=call.extra.get("recording"),
            media=call.extra.get("media"),
        )


def closed_by_restart(record: CallRecord, alive_until: float | None,
                      target_call_min_seconds: float | None) -> CallRecord:
    """An open record as a restart closes it: ended when the node was last known alive
    (never before the call started or was answered)."""
    known = max(t for t in (record.started_at, record.answered_at) if t is not None)
    end = known
    if alive_until is not None:
        end = max(known, datetime.fromtimestamp(alive_until, UTC))
    answered = record.answered_at
    ring = round(((answered or end) - record.started_at).total_seconds(), 3)
    talk = round((end - answered).total_seconds(), 3) if answered else 0.0
    return dataclasses.replace(
        record, ended_at=end, ring_seconds=ring, talk_seconds=talk, outcome="failed",
        hangup_by="system", reason="restart",
        qualified=(qualified(talk, target_call_min_seconds)
                   if target_call_min_seconds is not None else record.qualified))
