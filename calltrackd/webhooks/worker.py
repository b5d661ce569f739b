"""The delivery worker: reads due rows of the outbox, POSTs them, records the outcome.

Theory of operation
-------------------
Events are committed to the store's outbox together with the CDR change that causes them
(DESIGN "Outbox before network"); this worker only moves rows from *pending* to
*delivered* or *failed*. One loop polls `due_deliveries` — at once when `notify()` says new
rows were written, when a finished delivery frees room while more was due, else every
`poll_interval` — and starts one task per delivery, at most `per_endpoint_concurrency` per
endpoint (scheme, host, port, path) and `batch` in all. A row's id stays in `in_flight` from
the moment it is picked until its outcome is written, so a row that is still due in the
store is never sent twice at once. A read of the outbox takes a while (another thread), and
an outcome written meanwhile is not in it: the ids settled while a poll reads are skipped
by that poll, or an acknowledged row would come back as pending and be sent again (a
backlog drained with ~10% duplicates so).

Every attempt is signed at send time with the endpoint's *current* secret (a rotated secret
applies to retries), and ends in one store write: `mark_delivered` on 2xx, `reschedule`
with backoff on anything else, `mark_failed` once the event is older than `max_age` or its
endpoint is gone from the configuration. If that write fails (store down), the outcome is
kept in memory and written before the next poll, and the row is not sent meanwhile:
a receiver's acknowledgement is not thrown away because the store blinked.

Store errors never end the loop; they are logged and the poll backs off. On stop, running
requests finish (each bounded by `timeout`), then `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal, Protocol

import aiohttp
import structlog
from yarl import URL

from calltrackd import __version__
from calltrackd.tracking.model import WebhookDelivery

from .backoff import RETRY_AFTER_STATUSES, Backoff, RetryPolicy, is_success, parse_retry_after
from .signing import SIGNATURE_HEADER, sign

__all__ = [
    "DeliveryInFlightError",
    "DeliveryOutcome",
    "OutboxStore",
    "Result",
    "SecretLookup",
    "WebhookWorker",
    "endpoint_key",
]

Result = Literal["ok", "retry", "failed"]
# (tracker id, endpoint url) -> the endpoint's current secret; None once it left the config.
SecretLookup = Callable[[str, str], str | None]

USER_AGENT: Final = f"calltrackd/{__version__}"
ENDPOINT_REMOVED: Final = "endpoint removed"
_ERROR_SNIPPET_BYTES: Final = 200
_STORE_RETRY_CAP: Final = 30.0  # longest pause between polls while the store fails
_DRAIN_SLACK: Final = 1.0  # beyond `timeout`, for the store write after the last answer

_log = structlog.get_logger()


class OutboxStore(Protocol):
    """The part of the store the worker uses (calltrackd/store implements it)."""

    async def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        """Pending rows with next_attempt_at <= now, oldest first."""
        ...

    async def mark_delivered(self, delivery_id: str, now: float) -> None: ...

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None: ...

    async def pending_count(self) -> int: ...

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        """Rows handed out by `due_deliveries` that will not be sent now: due again."""
        ...


class DeliveryInFlightError(RuntimeError):
    """`deliver_once` was asked for a delivery that is being sent or recorded right now."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"delivery {delivery_id} is in flight")
        self.delivery_id = delivery_id


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one attempt came to."""

    delivery_id: str
    result: Result
    attempts: int  # attempts made so far, this one included
    status: int | None = None  # the receiver's HTTP status; None if it never answered
    error: str | None = None
    next_attempt_at: float | None = None  # set when result == "retry"
    recorded: bool = True  # False: the store write failed and is retried before next poll


def endpoint_key(url: str) -> str:
    """What the concurrency limit is per: scheme, host, port and path (never the query)."""
    try:
        u = URL(url)
        return f"{u.scheme}://{u.host}:{u.port}{u.path}"
    except (ValueError, TypeError):
        return url.split("?", 1)[0]


_Write = Callable[[], Awaitable[None]]


class WebhookWorker:
    def __init__(
        self,
        store: OutboxStore,
        secrets: SecretLookup,
        *,
        session: aiohttp.ClientSession | None = None,
        per_endpoint_concurrency: int = 4,
        batch: int = 100,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_age: float = 86400.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        if per_endpoint_concurrency < 1 or batch < 1:
            raise ValueError("per_endpoint_concurrency and batch must be at least 1")
        self._store = store
        self._secrets = secrets
        self._session = session
        self._owns_session = session is None
        self._per_endpoint = per_endpoint_concurrency
        self._batch = batch
        self._timeout = timeout
        self._policy = (
            RetryPolicy(max_age=max_age)
            if backoff is None
            else RetryPolicy(backoff=backoff, max_age=max_age)
        )
        self._poll_interval = poll_interval
        self._clock = clock
        self._on_result = on_result

        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: Counter[str] = Counter()  # poll-started tasks per endpoint
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._unrecorded: dict[str, _Write] = {}
        self._wakeup = asyncio.Event()
        self._more_due = False
        self._settled: set[str] | None = None  # outcomes written during a poll's read

    # --- public -------------------------------------------------------------------------

    @property
    def in_flight(self) -> frozenset[str]:
        """Ids being sent, or whose outcome waits to be written."""
        return frozenset(self._in_flight | self._unrecorded.keys())

    def notify(self) -> None:
        """New rows were committed: poll now rather than at the next tick."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then let running requests finish and return."""
        watcher = asyncio.create_task(self._wake_on(stop))
        store_failures = 0
        try:
            while not stop.is_set():
                self._wakeup.clear()
                if await self._poll():
                    store_failures = 0
                    pause = self._poll_interval
                else:
                    store_failures += 1
                    pause = min(_STORE_RETRY_CAP, self._poll_interval * 2 ** min(store_failures, 8))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wakeup.wait()
        finally:
            watcher.cancel()
            try:
                await self._drain()
                await self._flush_unrecorded()
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
        self._in_flight.add(delivery.id)
        try:
            return await self._attempt(delivery)
        finally:
            self._settle(delivery.id)

    async def aclose(self) -> None:
        """Close the HTTP session if this worker created it."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- the loop -------------------------------------------------------------------------

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wakeup.set()

    async def _poll(self) -> bool:
        """Start tasks for due rows; False if the store failed."""
        if not await self._flush_unrecorded():
            return False
        known = len(self._in_flight) + len(self._unrecorded)
        # Rows already in flight are still due in the store: ask past them.
        limit = self._batch + known
        self._settled = set()
        try:
            due = await self._store.due_deliveries(self._clock(), limit)
        except Exception:
            _log.warning("webhook_store_error", op="due_deliveries", exc_info=True)
            return False
        finally:
            settled, self._settled = self._settled, None
        more = len(due) >= limit
        skipped: list[str] = []
        for delivery in due:
            if delivery.id in self._in_flight or delivery.id in self._unrecorded:
                continue
            if delivery.id in settled:
                more = True  # the read may predate its outcome: look again next poll
                continue
            key = endpoint_key(delivery.url)
            if len(self._in_flight) >= self._batch or self._busy[key] >= self._per_endpoint:
                more = True  # picked up when one of the running requests ends
                skipped.append(delivery.id)
                continue
            self._start(delivery, key)
        self._more_due = more
        if skipped:
            # a store that leased these rows to us (Redis) hands them out again now,
            # not when the lease runs out
            try:
                await self._store.unlease(skipped)
            except Exception:
                _log.warning("webhook_store_error", op="unlease", exc_info=True)
        return True

    def _start(self, delivery: WebhookDelivery, key: str) -> None:
        self._in_flight.add(delivery.id)
        self._busy[key] += 1
        task = asyncio.create_task(self._run_one(delivery, key), name=f"webhook {delivery.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(self, delivery: WebhookDelivery, key: str) -> None:
        try:
            await self._attempt(delivery)
        except Exception:
            _log.exception("webhook_delivery_crashed", delivery_id=delivery.id)
        finally:
            self._settle(delivery.id)
            self._busy[key] -= 1
            if self._busy[key] <= 0:
                del self._busy[key]
            if self._more_due:
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
            _log.warning("webhook_drain_abandoned", deliveries=len(pending))

    # --- one attempt ------------------------------------------------------------------------

    async def _attempt(self, delivery: WebhookDelivery) -> DeliveryOutcome:
        write: _Write
        secret = self._secrets(delivery.tracker, delivery.url)
        if secret is None:
            outcome = DeliveryOutcome(
                delivery.id, "failed", delivery.attempts, error=ENDPOINT_REMOVED
            )
            write = functools.partial(
                self._store.mark_failed, delivery.id, delivery.attempts, ENDPOINT_REMOVED
            )
        else:
            attempts = delivery.attempts + 1
            async with self._semaphore(endpoint_key(delivery.url)):
                status, error, retry_after = await self._post(delivery, secret)
            now = self._clock()
            if error is None:
                outcome = DeliveryOutcome(delivery.id, "ok", attempts, status=status)
                write = functools.partial(self._store.mark_delivered, delivery.id, now)
            else:
                next_at = self._policy.next_attempt_at(
                    created_at=delivery.created_at,
                    attempts=attempts,
                    now=now,
                    retry_after=retry_after,
                )
                if next_at is None:
                    outcome = DeliveryOutcome(
                        delivery.id, "failed", attempts, status=status, error=error
                    )
                    write = functools.partial(self._store.mark_failed, delivery.id, attempts, error)
                else:
                    outcome = DeliveryOutcome(
                        delivery.id,
                        "retry",
                        attempts,
                        status=status,
                        error=error,
                        next_attempt_at=next_at,
                    )
                    write = functools.partial(
                        self._store.reschedule, delivery.id, attempts, next_at, error
                    )
        if not await self._record(delivery.id, write):
            outcome = replace(outcome, recorded=False)
        self._report(delivery, outcome)
        return outcome

    def _semaphore(self, key: str) -> asyncio.Semaphore:
        sem = self._semaphores.get(key)
        if sem is None:
            sem = self._semaphores[key] = asyncio.Semaphore(self._per_endpoint)
        return sem

    async def _post(
        self, delivery: WebhookDelivery, secret: str
    ) -> tuple[int | None, str | None, float | None]:
        """(status, error or None if acknowledged, Retry-After seconds)."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Calltrackd-Event": delivery.event,
            "X-Calltrackd-Delivery": delivery.event_id,
            SIGNATURE_HEADER: sign(secret, delivery.body, int(self._clock())),
        }
        try:
            async with self._get_session().post(
                delivery.url,
                data=delivery.body,
                headers=headers,
                # A redirect is not an acknowledgement, and following one would send the
                # event somewhere the configuration does not name.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                if is_success(resp.status):
                    return resp.status, None, None
                retry_after = None
                if resp.status in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
                snippet = await resp.content.read(_ERROR_SNIPPET_BYTES)
                text = " ".join(snippet.decode("utf-8", "replace").split())
                error = f"HTTP {resp.status}" + (f": {text}" if text else "")
                return resp.status, error, retry_after
        except TimeoutError:
            return None, f"timeout after {self._timeout:g}s", None
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}", None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._batch),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    # --- the store ----------------------------------------------------------------------

    async def _record(self, delivery_id: str, write: _Write) -> bool:
        try:
            await write()
        except Exception:
            _log.warning("webhook_store_error", op="record", delivery_id=delivery_id, exc_info=True)
            self._unrecorded[delivery_id] = write
            return False
        return True

    async def _flush_unrecorded(self) -> bool:
        for delivery_id, write in list(self._unrecorded.items()):
            try:
                await write()
            except Exception:
                _log.warning(
                    "webhook_store_error", op="record", delivery_id=delivery_id, exc_info=True
                )
                return False
            del self._unrecorded[delivery_id]
        return True

    def _report(self, delivery: WebhookDelivery, outcome: DeliveryOutcome) -> None:
        log = _log.info if outcome.result == "ok" else _log.warning
        log(
            "webhook_delivery",
            delivery_id=delivery.id,
            event_id=delivery.event_id,
            webhook_event=delivery.event,
            tracker=delivery.tracker,
            endpoint=endpoint_key(delivery.url),
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
        if self._on_result is not None:
            try:
                self._on_result(outcome.result)
            except Exception:
                _log.exception("webhook_on_result_failed")
