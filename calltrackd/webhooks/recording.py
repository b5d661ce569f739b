"""The delivery worker's store writes: each row's outcome, in the store and in the log.

An attempt ends in one store write per row (`mark_delivered`, `reschedule` or
`mark_failed`, attempt.py says which). If that write fails (store down), the outcome is
kept in memory (`unrecorded`) and written before the next poll (`flush`); the worker does
not send such a row meanwhile, so a receiver's acknowledgement is not thrown away because
the store blinked. The acknowledgements of requests that end together share one write
(`acknowledge`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import structlog

from calltrackd.tracking.model import WebhookDelivery

from .destinations import endpoint_key
from .outbox import DeliveryOutcome, OutboxStore

Write = Callable[[], Awaitable[None]]

_log = structlog.get_logger()


class Recorder:
    """Writes outcomes to the store (keeping in memory those it could not write) and
    tells the log and the worker's callbacks."""

    def __init__(
        self,
        store: OutboxStore,
        clock: Callable[[], float],
        on_result: Callable[[str], None] | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_result = on_result
        self._on_outcome = on_outcome
        self.unrecorded: dict[str, Write] = {}  # delivery id -> the write still to make
        self._acks: list[tuple[list[str], float, asyncio.Future[bool]]] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def record(self, ids: list[str], write: Write) -> bool:
        """Make the write of these rows' outcome; False: kept for `flush`."""
        try:
            await write()
        except Exception:
            _log.warning("webhook.store_error", op="record", delivery_id=ids[0], exc_info=True)
            for delivery_id in ids:
                self.unrecorded[delivery_id] = write
            return False
        return True

    async def flush(self) -> bool:
        """Make the writes kept in memory; False if the store still fails."""
        done: set[int] = set()
        for delivery_id, write in list(self.unrecorded.items()):
            if id(write) not in done:  # one write may cover a batch of rows
                try:
                    await write()
                except Exception:
                    _log.warning(
                        "webhook.store_error", op="record", delivery_id=delivery_id,
                        exc_info=True)
                    return False
                done.add(id(write))
            del self.unrecorded[delivery_id]
        return True

    async def acknowledge(self, ids: list[str], now: float) -> bool:
        """Write that these rows were delivered, together with the acknowledgements of the
        other requests that ended meanwhile (one store write for them all: at 150
        deliveries/s one each was a tenth of the worker's CPU). False: not written yet,
        kept in memory and written before the next poll."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = self._loop.create_future()
        self._acks.append((ids, now, done))
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = self._loop.create_task(self._write_acks())
        if await done:
            return True
        for delivery_id in ids:
            self.unrecorded[delivery_id] = functools.partial(
                self._mark_delivered, [delivery_id], now)
        return False

    async def _write_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            ids = [i for group, _, _ in batch for i in group]
            try:
                await self._mark_delivered(ids, max(now for _, now, _ in batch))
                ok = True
            except Exception:
                _log.warning("webhook.store_error", op="record", delivery_id=ids[0],
                             exc_info=True)
                ok = False
            for _, _, done in batch:
                if not done.done():
                    done.set_result(ok)

    async def _mark_delivered(self, ids: list[str], now: float) -> None:
        many = getattr(self._store, "mark_delivered_many", None)
        if many is not None and len(ids) > 1:
            await many(ids, now)
            return
        for delivery_id in ids:
            await self._store.mark_delivered(delivery_id, now)

    def report(self, row: WebhookDelivery, outcome: DeliveryOutcome, count: bool = True) -> None:
        """Log the outcome; tell the callbacks unless `count` is False (a row skipped)."""
        log = _log.info if outcome.result == "ok" else _log.warning
        log(
            "webhook.delivery",
            delivery_id=row.id,
            event_id=row.event_id,
            webhook_event=row.event,
            kind=row.kind,
            tracker=row.tracker,
            endpoint=endpoint_key(row.url) if row.kind == "webhook" else row.url,
            attempt=outcome.attempts,
            result=outcome.result,
            status=outcome.status,
            error=outcome.error,
            next_attempt_in=(
                None
                if outcome.next_attempt_at is None
                else round(outcome.next_attempt_at - self._clock(), 3)
            ),
            recorded=outcome.recorded,
        )
        if not count:
            return
        try:
            if self._on_result is not None:
                self._on_result(outcome.result)
            if self._on_outcome is not None:
                self._on_outcome(row.kind, outcome.result)
        except Exception:
            _log.exception("webhook.on_result_failed")
