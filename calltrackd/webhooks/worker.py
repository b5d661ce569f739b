"""The delivery worker: reads due rows of the outbox, sends them, records the outcome.

Theory of operation
-------------------
Events are committed to the store's outbox together with the CDR change that causes them
(the outbox before any network I/O); this worker only moves rows from *pending* to
*delivered* or *failed*. A row has a kind (webhook, ga4, metrica, telegram, slack); a
`Destination` (destinations.py, exports/) turns rows into requests and answers into
outcomes, and the worker does the rest the same way for every kind.

Rows are grouped by their destination's key (a webhook endpoint: scheme, host, port,
path). Each key has a *ready queue* of rows read from the store and not yet sent, and a
window of requests in flight. The store is read only when that can start something: a
`notify(rows)` for a key with a free slot (or an unknown key), a slot freed on a key whose
ready queue ran dry while the store had more for it, or the periodic tick (rows whose
retry time came). A notify for a key whose slots are all busy only notes that the store
has more for it, so a steady stream to a saturated endpoint costs no reads at all: the
reads are one per ready queue's worth of deliveries, whatever the backlog (with one
endpoint at 300 events/s the old poll re-read the due rows for every new event).

The window of requests in flight is adaptive per key (`window.py`, AIMD like TCP's): it
starts at `initial_concurrency`, grows while rows wait for it, never past
`per_endpoint_concurrency`, and is halved by failures.

A row's id stays in `in_flight` from the moment it is taken from a ready queue until its
outcome is written, and in `_queued` while it waits in one, so a row that is still due in
the store is never sent twice at once. A read of the outbox takes a while (another
thread), and an outcome written meanwhile is not in it: the ids settled while a poll reads
are skipped by that poll, or an acknowledged row would come back as pending and be sent
again. Rows wait in a ready queue at most `READY_TTL` seconds (the Redis store leases them
for 60 s); older ones are given back and read again.

An attempt (attempt.py) is prepared at send time from the current configuration and ends
in one store write per row; a write that fails is kept in memory and made before the next
poll (recording.py), and the row is not sent meanwhile.

Store errors never end the loop; they are logged and the poll backs off. On stop, running
requests finish (each bounded by `timeout`), then `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import aiohttp
import structlog

from calltrackd.tracking.model import WebhookDelivery

from .attempt import ENDPOINT_REMOVED, Attempts, Sender
from .backoff import Backoff, RetryPolicy
from .destinations import USER_AGENT, Destination, Resolver, WebhookDestination, endpoint_key
from .outbox import DeliveryInFlightError, DeliveryOutcome, OutboxStore, Result, SecretLookup
from .recording import Recorder
from .window import AdaptiveWindow

__all__ = [
    "ENDPOINT_REMOVED",
    "USER_AGENT",
    "DeliveryInFlightError",
    "DeliveryOutcome",
    "OutboxStore",
    "Result",
    "SecretLookup",
    "WebhookWorker",
    "endpoint_key",
]

READY_TTL: Final = 20.0  # seconds a row read from the store may wait to be sent
READ_AHEAD: Final = 256  # rows a poll reads beyond those it already holds
_STORE_RETRY_CAP: Final = 30.0  # longest pause between polls while the store fails
_DRAIN_SLACK: Final = 1.0  # beyond `timeout`, for the store write after the last answer

_log = structlog.get_logger()


class _Key:
    """One destination key: its ready queue, its requests in flight and their window."""

    __slots__ = ("behind", "busy", "ready", "win")

    def __init__(self, window: float, limit: int) -> None:
        self.ready: deque[tuple[WebhookDelivery, Destination, float]] = deque()
        self.busy = 0
        self.win = AdaptiveWindow(window, limit)
        self.behind = False  # the store holds due rows for this key not in `ready`

    def room(self) -> int:
        return max(0, self.win.size - self.busy)


class WebhookWorker:
    def __init__(
        self,
        store: OutboxStore,
        secrets: SecretLookup,
        *,
        session: aiohttp.ClientSession | None = None,
        per_endpoint_concurrency: int = 32,
        initial_concurrency: int = 4,
        batch: int = 256,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_age: float = 86400.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str], None] | None = None,
        resolve: Resolver | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
        on_skip: Callable[[str, str], None] | None = None,
    ) -> None:
        """`per_endpoint_concurrency` is the most requests in flight per destination;
        the window starts at `initial_concurrency` (at most that). `batch` caps requests
        in flight in all. `resolve` finds the destination of any row; without it every
        row is a webhook whose secret `secrets` gives. `on_result(result)` and
        `on_outcome(kind, result)` are told every row's outcome; a row not sent because its
        destination refused it (too old for the service) is told to `on_skip(kind, reason)`
        instead."""
        if per_endpoint_concurrency < 1 or batch < 1 or initial_concurrency < 1:
            raise ValueError("concurrency and batch must be at least 1")
        self._store = store
        self._secrets = secrets
        self._resolve: Resolver = resolve or self._webhook_destination
        self._per_endpoint = per_endpoint_concurrency
        self._initial = min(initial_concurrency, per_endpoint_concurrency)
        self._batch = batch
        self._timeout = timeout
        policy = (
            RetryPolicy(max_age=max_age)
            if backoff is None
            else RetryPolicy(backoff=backoff, max_age=max_age)
        )
        self._poll_interval = poll_interval
        # the store failing: polls 2, 4, ... 256 poll intervals apart, at most _STORE_RETRY_CAP
        retry_cap = min(_STORE_RETRY_CAP, poll_interval * 2**8)
        self._store_retry = Backoff(min(2 * poll_interval, retry_cap), retry_cap)
        self._clock = clock
        self._sender = Sender(session, timeout=timeout, connections=batch, clock=clock)
        self._recorder = Recorder(store, clock, on_result, on_outcome)
        self._unrecorded = self._recorder.unrecorded  # outcomes still to write, by row id
        self._attempts = Attempts(store, policy, self._sender, self._recorder, clock, on_skip)

        self._keys: dict[str, _Key] = {}
        self._queued: set[str] = set()  # ids in a ready queue
        self._in_flight: set[str] = set()
        self._requests = 0  # requests in flight, all keys
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._poll_wanted = True  # the store may hold rows something could start now
        self._settled: set[str] | None = None  # outcomes written during a poll's read
        self.polls = 0  # store reads made (for tests and benchmarks)
        self._excludes = "exclude_urls" in inspect.signature(store.due_deliveries).parameters

    # --- public -------------------------------------------------------------------------

    @property
    def in_flight(self) -> frozenset[str]:
        """Ids being sent, or whose outcome waits to be written."""
        return frozenset(self._in_flight | self._unrecorded.keys())

    def window(self, key: str) -> float | None:
        """The current concurrency window of a destination key (None: never seen)."""
        k = self._keys.get(key)
        return None if k is None else min(k.win.window, float(k.win.limit))

    def notify(self, rows: Iterable[WebhookDelivery] | None = None) -> None:
        """New rows were committed: read the store now if one of them can be sent now."""
        if rows is None:
            self._want_poll()
            return
        for row in rows:
            dest = self._safe_resolve(row)
            k = self._keys.get(dest.key) if dest is not None else None
            if k is None or (k.room() > 0 and not k.ready):
                self._want_poll()
                return
            k.behind = True  # picked up when one of its requests ends

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then let running requests finish and return."""
        watcher = asyncio.create_task(self._wake_on(stop))
        store_failures = 0
        try:
            while not stop.is_set():
                self._wakeup.clear()
                if self._poll_wanted and self._requests < self._batch:
                    if await self._poll():
                        store_failures = 0
                    else:
                        store_failures += 1
                pause = (self._store_retry.compute(store_failures) if store_failures
                         else self._poll_interval)
                try:
                    async with asyncio.timeout(pause):
                        await self._wakeup.wait()
                except TimeoutError:
                    self._poll_wanted = True  # the tick: retries whose time came
        finally:
            watcher.cancel()
            try:
                await self._drain()
                await self._recorder.flush()
                await self._give_back_ready()
            finally:
                for task in self._tasks:  # only left if run() itself was cancelled
                    task.cancel()
                await self.aclose()

    async def deliver_once(self, delivery: WebhookDelivery) -> DeliveryOutcome:
        """One attempt now, recorded in the store like any other (the admin "re-send").

        Raises DeliveryInFlightError if the worker is sending this delivery right now.
        """
        if delivery.id in self._in_flight or delivery.id in self._unrecorded:
            raise DeliveryInFlightError(delivery.id)
        self._unqueue(delivery.id)
        self._in_flight.add(delivery.id)
        try:
            outcomes = await self._attempts.run([delivery], self._safe_resolve(delivery))
        finally:
            self._settle(delivery.id)
        return outcomes[0]

    async def aclose(self) -> None:
        """Close the HTTP session if this worker created it."""
        await self._sender.aclose()

    # --- the loop -------------------------------------------------------------------------

    def _want_poll(self) -> None:
        self._poll_wanted = True
        self._wakeup.set()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wakeup.set()

    def _webhook_destination(self, row: WebhookDelivery) -> Destination | None:
        secret = self._secrets(row.tracker, row.url)
        return None if secret is None else WebhookDestination(row.url, secret)

    def _safe_resolve(self, row: WebhookDelivery) -> Destination | None:
        try:
            return self._resolve(row)
        except Exception:
            _log.exception("webhook.outbox_resolve_failed", delivery_id=row.id, kind=row.kind)
            return None

    def _key(self, dest: Destination) -> _Key:
        k = self._keys.get(dest.key)
        if k is None:
            limit = dest.concurrency or self._per_endpoint
            k = self._keys[dest.key] = _Key(float(self._initial), limit)
        return k

    async def _poll(self) -> bool:
        """Read due rows into the ready queues and start what fits; False if the store
        failed."""
        self._poll_wanted = False
        if not await self._recorder.flush():
            self._poll_wanted = True
            return False
        await self._drop_stale()
        known = len(self._in_flight) + len(self._unrecorded) + len(self._queued)
        # Rows in flight or queued are still due in a store without leases: ask past them.
        limit = known + READ_AHEAD
        self._settled = set()
        self.polls += 1
        # The read sees every due row, unless it is full: what keys were behind before it
        # is forgotten then. A notify while it reads (rows it may not see) sets them again.
        before = {key for key, k in self._keys.items() if k.behind}
        for k in self._keys.values():
            k.behind = False
        # destinations with enough in their ready queue are left out of the read: a backlog
        # of one must not hide the rows of the others (an alert behind a CRM's)
        full_urls: set[str] = set()
        for k in self._keys.values():
            if k.ready and len(k.ready) >= self._sated(k, k.ready[0][1]):
                full_urls.update(row.url for row, _, _ in k.ready)
        try:
            if full_urls and self._excludes:
                due = await self._store.due_deliveries(  # type: ignore[call-arg]
                    self._clock(), limit, exclude_urls=full_urls)
            else:
                due = await self._store.due_deliveries(self._clock(), limit)
        except Exception:
            _log.warning("webhook.store_error", op="due_deliveries", exc_info=True)
            self._poll_wanted = True
            for key in before:
                self._keys[key].behind = True
            return False
        finally:
            settled, self._settled = self._settled, None
        full = len(due) >= limit
        now_mono = time.monotonic()
        give_back: list[str] = []
        touched: set[str] = set()
        if full:
            for key in before:
                self._keys[key].behind = True
        for row in due:
            if row.id in self._in_flight or row.id in self._unrecorded or row.id in self._queued:
                continue
            if row.id in settled:
                self._poll_wanted = True  # the read may predate its outcome: look again
                continue
            dest = self._safe_resolve(row)
            if dest is None:
                self._start_removed(row)
                continue
            k = self._key(dest)
            if len(k.ready) >= self._ready_cap(k, dest):
                k.behind = True  # read again once its queue ran dry
                give_back.append(row.id)
                continue
            k.ready.append((row, dest, now_mono))
            self._queued.add(row.id)
            touched.add(dest.key)
        for key in touched:
            k = self._keys[key]
            # a full read may have left more of this key's rows in the store
            k.behind = k.behind or full
            self._pump(k)
        if give_back and full and self._excludes:
            # the read was filled by a destination that has enough now: read past it
            self._want_poll()
        if give_back:
            # a store that leased these rows to us (Redis) hands them out again now,
            # not when the lease runs out
            try:
                await self._store.unlease(give_back)
            except Exception:
                _log.warning("webhook.store_error", op="unlease", exc_info=True)
        return True

    def _ready_cap(self, k: _Key, dest: Destination) -> int:
        return max(READ_AHEAD, 2 * k.win.limit * dest.batch)

    def _sated(self, k: _Key, dest: Destination) -> int:
        """Rows in a ready queue from which a read leaves its destination out."""
        return min(self._ready_cap(k, dest), max(16, 2 * k.win.limit * dest.batch))

    async def _drop_stale(self) -> None:
        """Rows that waited in a ready queue past READY_TTL go back to the store (and, on a
        store that leases them, to every node) before their lease runs out."""
        cutoff = time.monotonic() - READY_TTL
        dropped: list[str] = []
        for k in self._keys.values():
            while k.ready and k.ready[0][2] < cutoff:
                row, _, _ = k.ready.popleft()
                self._queued.discard(row.id)
                dropped.append(row.id)
                k.behind = True
        if dropped:
            try:
                await self._store.unlease(dropped)
            except Exception:
                _log.warning("webhook.store_error", op="unlease", exc_info=True)

    async def _give_back_ready(self) -> None:
        ids = list(self._queued)
        for k in self._keys.values():
            k.ready.clear()
        self._queued.clear()
        if ids:
            with contextlib.suppress(Exception):
                await self._store.unlease(ids)

    def _unqueue(self, delivery_id: str) -> None:
        if delivery_id not in self._queued:
            return
        self._queued.discard(delivery_id)
        for k in self._keys.values():
            for entry in k.ready:
                if entry[0].id == delivery_id:
                    k.ready.remove(entry)
                    return

    def _pump(self, k: _Key) -> None:
        """Start requests from the key's ready queue while it has room."""
        while k.ready and k.room() > 0 and self._requests < self._batch:
            row, dest, _ = k.ready.popleft()
            rows = [row]
            # a batch: the rows after it that go to the same destination
            while k.ready and len(rows) < dest.batch:
                nxt = k.ready[0][0]
                if (nxt.tracker, nxt.url, nxt.kind) != (row.tracker, row.url, row.kind):
                    break
                rows.append(k.ready.popleft()[0])
            for r in rows:
                self._queued.discard(r.id)
                self._in_flight.add(r.id)
            self._start(rows, dest, k)
        if not k.ready and k.behind and k.room() > 0:
            self._want_poll()

    def _start(self, rows: list[WebhookDelivery], dest: Destination | None,
               k: _Key | None) -> None:
        if k is not None:
            k.busy += 1
        self._requests += 1
        task = asyncio.create_task(self._run_one(rows, dest, k), name=f"outbox {rows[0].id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_removed(self, row: WebhookDelivery) -> None:
        self._in_flight.add(row.id)
        self._start([row], None, None)

    async def _run_one(self, rows: list[WebhookDelivery], dest: Destination | None,
                       k: _Key | None) -> None:
        try:
            if k is None:
                await self._attempts.run(rows, dest)
            else:
                await self._attempts.run(rows, dest, k.win, bool(k.ready) or k.behind)
        except Exception:
            _log.exception("webhook.delivery_crashed", delivery_id=rows[0].id)
        finally:
            for r in rows:
                self._settle(r.id)
            self._requests -= 1
            if k is not None:
                k.busy -= 1
                self._pump(k)
            if self._poll_wanted:
                self._wakeup.set()

    def _settle(self, delivery_id: str) -> None:
        self._in_flight.discard(delivery_id)
        if self._settled is not None:
            self._settled.add(delivery_id)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._timeout + _DRAIN_SLACK)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            # Still pending in the store: sent again after the restart (at-least-once).
            _log.warning("webhook.drain_abandoned", deliveries=len(pending))
