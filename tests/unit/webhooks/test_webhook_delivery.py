"""The delivery worker against a real aiohttp receiver on 127.0.0.1 and an in-memory outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

import calltrackd
from calltrackd.tracking.model import WebhookDelivery
from calltrackd.webhooks.backoff import ExponentialJitterBackoff
from calltrackd.webhooks.destinations import WebhookDestination, endpoint_key
from calltrackd.webhooks.payload import new_delivery_id, new_event_id
from calltrackd.webhooks.signing import verify
from calltrackd.webhooks.worker import DeliveryInFlightError, OutboxStore, WebhookWorker

SECRET = "whsec_test"
FAST = ExponentialJitterBackoff(base=0.01, cap=0.05)


# --- an outbox in memory ------------------------------------------------------------------


class MemoryOutbox:
    """The store's outbox, in a dict; `fail_reads`/`fail_writes` make the next calls raise."""

    def __init__(self) -> None:
        self.rows: dict[str, WebhookDelivery] = {}
        self.fail_reads = 0
        self.unleased: list[str] = []
        self.fail_writes = 0
        # when set up: a read sees the outbox as it is, then waits for this before it answers
        self.read_gate: asyncio.Event | None = None

    def add(self, *deliveries: WebhookDelivery) -> None:
        for d in deliveries:
            self.rows[d.id] = d

    def _write(self) -> None:
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("store down")

    async def due_deliveries(self, now: float, limit: int,
                             exclude_urls: Collection[str] = ()) -> list[WebhookDelivery]:
        if self.fail_reads:
            self.fail_reads -= 1
            raise ConnectionError("store down")
        due = [d for d in self.rows.values() if d.status == "pending" and d.next_attempt_at <= now
               and d.url not in exclude_urls]
        if self.read_gate is not None:
            await self.read_gate.wait()
        return sorted(due, key=lambda d: d.created_at)[:limit]

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        self.unleased += list(delivery_ids)

    async def mark_delivered(self, delivery_id: str, now: float) -> None:
        self._write()
        self.rows[delivery_id] = dataclasses.replace(self.rows[delivery_id], status="delivered")

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None:
        self._write()
        self.rows[delivery_id] = dataclasses.replace(
            self.rows[delivery_id],
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=error,
        )

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None:
        self._write()
        self.rows[delivery_id] = dataclasses.replace(
            self.rows[delivery_id], status="failed", attempts=attempts, last_error=error
        )

    async def pending_count(self) -> int:
        return sum(d.status == "pending" for d in self.rows.values())


def _typed(store: MemoryOutbox) -> OutboxStore:
    return store  # mypy checks that the fake satisfies the Protocol


# --- a receiver on a real socket ----------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base_url: str = ""
    # Answers in order: a status, or (status, headers); 200 once the script runs out.
    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    gate: asyncio.Event | None = None  # when set up: requests wait until it is set
    hang_up: int = 0  # close the connection without answering, this many times
    requests: list[Received] = field(default_factory=list)
    active: Counter[str] = field(default_factory=Counter)
    max_active: Counter[str] = field(default_factory=Counter)
    max_total: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body))
        if self.hang_up > 0:
            self.hang_up -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=204)
        self.arrived.set()
        self.active[request.path] += 1
        self.max_active[request.path] = max(
            self.max_active[request.path], self.active[request.path]
        )
        self.max_total = max(self.max_total, self.active.total())
        try:
            await asyncio.sleep(self.delay)
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.active[request.path] -= 1
        answer = self.script.pop(0) if self.script else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, text="nope" if status >= 300 else "", headers=headers)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rx.base_url = f"http://{host}:{port}"
    yield rx
    await runner.cleanup()


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    yield port


# --- helpers ----------------------------------------------------------------------------


def delivery(
    url: str, *, created_at: float | None = None, event: str = "call.ended"
) -> WebhookDelivery:
    event_id = new_event_id()
    now = time.time() if created_at is None else created_at
    body = json.dumps({"event": event, "event_id": event_id}, separators=(",", ":")).encode()
    return WebhookDelivery(
        id=new_delivery_id(),
        event_id=event_id,
        event=event,
        tracker="acme",
        url=url,
        body=body,
        created_at=now,
        next_attempt_at=now,
    )


async def wait_until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@dataclass
class Harness:
    store: MemoryOutbox
    results: list[str]
    worker: WebhookWorker
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        await self.worker.aclose()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(secrets: Callable[[str, str], str | None] | None = None, **kw: Any) -> Harness:
        store = MemoryOutbox()
        results: list[str] = []
        kw.setdefault("backoff", FAST)
        kw.setdefault("poll_interval", 0.02)
        worker = WebhookWorker(
            _typed(store),
            secrets or (lambda tracker, url: SECRET),
            on_result=results.append,
            **kw,
        )
        h = Harness(store, results, worker, asyncio.Event())
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.finish()


# --- tests ------------------------------------------------------------------------------


async def test_receiver_failing_three_times_gets_the_event_once_it_acknowledges(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.script = [500, 500, 500]
    h = make()
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await wait_until(lambda: h.store.rows[d.id].status == "delivered")
    await asyncio.sleep(0.1)  # nothing more arrives once acknowledged

    assert len(receiver.requests) == 4
    assert h.results == ["retry", "retry", "retry", "ok"]
    assert h.store.rows[d.id].attempts == 3
    assert h.store.rows[d.id].last_error == "HTTP 500: nope"
    for req in receiver.requests:
        assert req.body == d.body
        assert req.headers["X-Calltrackd-Delivery"] == d.event_id
        assert req.headers["X-Calltrackd-Event"] == "call.ended"
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"] == f"calltrackd/{calltrackd.__version__}"
        assert verify(SECRET, req.body, req.headers["X-Calltrackd-Signature"])


async def test_unreachable_receiver_schedules_a_retry(
    closed_port: int, make: Callable[..., Harness]
) -> None:
    h = make()
    d = delivery(f"http://127.0.0.1:{closed_port}/hook")
    h.store.add(d)
    before = time.time()
    outcome = await h.worker.deliver_once(d)

    assert outcome.result == "retry" and outcome.status is None
    row = h.store.rows[d.id]
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_attempt_at > before
    assert row.last_error is not None and "Connect" in row.last_error
    assert h.results == ["retry"]


async def test_slow_receiver_times_out_and_is_retried(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.3
    h = make(timeout=0.05)
    d = delivery(receiver.url())
    h.store.add(d)
    outcome = await h.worker.deliver_once(d)
    assert (outcome.result, outcome.error) == ("retry", "timeout after 0.05s")


async def test_removed_endpoint_is_marked_failed_without_a_request(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make(secrets=lambda tracker, url: None)
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await wait_until(lambda: h.store.rows[d.id].status == "failed")
    assert h.store.rows[d.id].last_error == "endpoint removed"
    assert receiver.requests == []
    assert h.results == ["failed"]


async def test_event_older_than_max_age_is_given_up(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.script = [503] * 100
    h = make(max_age=0.2)
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await wait_until(lambda: h.store.rows[d.id].status == "failed")
    row = h.store.rows[d.id]
    assert row.attempts >= 2 and row.last_error == "HTTP 503: nope"
    assert time.time() - d.created_at >= 0.2
    assert h.results[-1] == "failed" and set(h.results[:-1]) == {"retry"}


async def test_per_endpoint_concurrency_is_respected(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.05
    # A long poll interval: finished requests must pull in the rest, not the clock.
    h = make(per_endpoint_concurrency=2, poll_interval=10.0)
    rows = [delivery(receiver.url(path)) for path in ("/a", "/b") for _ in range(8)]
    h.store.add(*rows)
    h.start()
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()))
    assert len(receiver.requests) == 16
    assert receiver.max_active == Counter({"/a": 2, "/b": 2})
    assert receiver.max_total == 4


async def test_a_delivery_is_never_sent_twice_at_once(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.3
    h = make(poll_interval=0.01)  # polls many times while the request is running
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await receiver.arrived.wait()
    assert d.id in h.worker.in_flight
    with pytest.raises(DeliveryInFlightError):
        await h.worker.deliver_once(d)
    await wait_until(lambda: h.store.rows[d.id].status == "delivered")
    assert len(receiver.requests) == 1


async def test_stop_lets_the_running_request_finish(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.3
    h = make()
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await receiver.arrived.wait()
    h.stop.set()
    assert h.task is not None
    await asyncio.wait_for(h.task, 2)
    assert h.store.rows[d.id].status == "delivered"
    assert h.worker.in_flight == frozenset()


async def test_stop_while_idle_returns_promptly(make: Callable[..., Harness]) -> None:
    h = make(poll_interval=30.0)
    h.start()
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await h.finish()
    assert time.monotonic() - started < 0.5


async def test_notify_delivers_new_events_without_waiting_for_the_poll(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make(poll_interval=30.0)
    h.start()
    await asyncio.sleep(0.05)  # the first, empty poll is done
    d = delivery(receiver.url())
    h.store.add(d)
    h.worker.notify()
    await wait_until(lambda: h.store.rows[d.id].status == "delivered", within=1.0)


async def test_store_outage_neither_stops_the_worker_nor_resends_an_acknowledged_event(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make(poll_interval=0.01)
    d = delivery(receiver.url())
    h.store.add(d)
    h.store.fail_reads = 2  # the store is down at start
    h.store.fail_writes = 2  # and again when the acknowledgement is to be written
    with capture_logs() as logs:
        h.start()
        await wait_until(lambda: h.store.rows[d.id].status == "delivered")
    assert len(receiver.requests) == 1
    errors = [e for e in logs if e["event"] == "webhook.store_error"]
    assert {e["op"] for e in errors} == {"due_deliveries", "record"}
    assert len(errors) == 4


async def test_signature_uses_the_secret_current_at_send_time(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    secrets = {"acme": "whsec_old"}
    receiver.script = [500]
    h = make(secrets=lambda tracker, url: secrets[tracker])
    d = delivery(receiver.url())
    h.store.add(d)
    await h.worker.deliver_once(d)
    secrets["acme"] = "whsec_new"
    await h.worker.deliver_once(h.store.rows[d.id])
    first, second = receiver.requests
    assert verify("whsec_old", first.body, first.headers["X-Calltrackd-Signature"])
    assert verify("whsec_new", second.body, second.headers["X-Calltrackd-Signature"])
    assert h.store.rows[d.id].status == "delivered"


async def test_retry_after_on_503_postpones_the_next_attempt(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.script = [(503, {"Retry-After": "30"})]
    h = make()
    d = delivery(receiver.url())
    h.store.add(d)
    outcome = await h.worker.deliver_once(d)
    assert outcome.result == "retry" and outcome.next_attempt_at is not None
    assert outcome.next_attempt_at - time.time() > 29


async def test_redirect_is_not_followed_and_counts_as_a_failure(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.script = [(302, {"Location": receiver.url("/elsewhere")})]
    h = make()
    d = delivery(receiver.url())
    h.store.add(d)
    outcome = await h.worker.deliver_once(d)
    assert (outcome.result, outcome.status) == ("retry", 302)
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_resend_of_a_failed_delivery_that_now_succeeds_is_marked_delivered(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make()
    d = dataclasses.replace(
        delivery(receiver.url()), status="failed", attempts=40, last_error="HTTP 500"
    )
    h.store.add(d)
    outcome = await h.worker.deliver_once(d)
    assert (outcome.result, outcome.attempts) == ("ok", 41)
    assert h.store.rows[d.id].status == "delivered"


async def test_cancelling_run_during_the_drain_abandons_requests_but_keeps_the_event(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.5
    h = make()
    d = delivery(receiver.url())
    h.store.add(d)
    h.start()
    await receiver.arrived.wait()
    h.stop.set()
    await asyncio.sleep(0.05)
    task, h.task = h.task, None
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: not h.worker.in_flight, within=1.0)
    assert h.store.rows[d.id].status == "pending"  # sent again after the restart


# --- keeping up: reads, adaptive windows, batches ------------------------------------------


async def test_a_stream_to_a_saturated_endpoint_costs_no_store_reads(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.gate = asyncio.Event()  # the receiver holds every request until released
    h = make(per_endpoint_concurrency=2, initial_concurrency=2, poll_interval=30.0)
    first = [delivery(receiver.url()) for _ in range(2)]
    h.store.add(*first)
    h.start()
    await wait_until(lambda: len(receiver.requests) == 2)
    reads = h.worker.polls
    stream = [delivery(receiver.url()) for _ in range(200)]
    for d in stream:  # as the daemon does after each CDR write: both slots are busy
        h.store.add(d)
        h.worker.notify([d])
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert h.worker.polls == reads  # nothing could start: nothing was read
    receiver.gate.set()
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()),
                     within=20)
    assert len(receiver.requests) == 202
    # one read takes a ready queue's worth of rows (256), not one per event
    assert h.worker.polls - reads <= 3


async def test_the_window_grows_while_rows_wait_and_halves_when_the_receiver_fails(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.delay = 0.05
    h = make(per_endpoint_concurrency=8, initial_concurrency=1, poll_interval=0.2)
    h.store.add(*(delivery(receiver.url()) for _ in range(400)))
    h.start()
    key = endpoint_key(receiver.url())
    await wait_until(lambda: h.worker.window(key) == 8.0, within=30)
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()),
                     within=30)
    assert receiver.max_active["/hook"] == 8  # grew to the ceiling, never past it

    receiver.script = [500] * 20  # the receiver starts failing
    failing = [delivery(receiver.url()) for _ in range(20)]
    h.store.add(*failing)
    h.worker.notify(failing)
    await wait_until(lambda: not receiver.script, within=30)
    window = h.worker.window(key)
    assert window is not None and window <= 4.0  # halved (at most once per round trip)
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()),
                     within=30)


async def test_a_batching_endpoint_gets_json_arrays_signed_over_the_whole_body(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make(resolve=lambda row: WebhookDestination(row.url, SECRET, batch=10),
             initial_concurrency=4)
    rows = [delivery(receiver.url()) for _ in range(25)]
    h.store.add(*rows)
    h.start()
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()))
    sizes = []
    seen = []
    for req in receiver.requests:
        events = json.loads(req.body)
        assert isinstance(events, list)
        assert req.headers["X-Calltrackd-Batch"] == str(len(events))
        assert verify(SECRET, req.body, req.headers["X-Calltrackd-Signature"])
        assert req.body == b"[" + b",".join(
            next(r.body for r in rows if r.event_id == e["event_id"]) for e in events) + b"]"
        sizes.append(len(events))
        seen += [e["event_id"] for e in events]
    assert sorted(sizes) == [5, 10, 10]
    assert sorted(seen) == sorted(r.event_id for r in rows)  # each event once


async def test_a_row_its_destination_refuses_is_marked_failed_and_counted_not_sent(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    from calltrackd.exports.ga4 import Ga4Destination
    from calltrackd.tracking.model import Ga4Export

    export = Ga4Export("G-TEST123", "api-secret", base_url=receiver.base_url)
    skipped: list[tuple[str, str]] = []
    h = make(resolve=lambda row: Ga4Destination(export), on_skip=lambda k, r: skipped.append(
        (k, r)))
    now = time.time()
    fresh = dataclasses.replace(delivery("ga4:G-TEST123"), kind="ga4", body=json.dumps(
        {"client_id": "1.2", "timestamp_micros": int(now * 1e6), "events": []}).encode())
    old = dataclasses.replace(fresh, id=new_delivery_id(), body=json.dumps(
        {"client_id": "1.2", "timestamp_micros": int((now - 73 * 3600) * 1e6),
         "events": []}).encode())
    h.store.add(fresh, old)
    h.start()
    await wait_until(lambda: h.store.rows[fresh.id].status == "delivered"
                     and h.store.rows[old.id].status == "failed")
    assert h.store.rows[old.id].last_error == "older than GA4's 72-hour window"
    assert skipped == [("ga4", "older than GA4's 72-hour window")]
    (req,) = receiver.requests
    assert req.path == "/mp/collect" and req.body == fresh.body
    assert h.results == ["ok"]  # the skipped row is not a delivery attempt


async def test_a_kept_alive_connection_closed_by_the_receiver_is_retried_at_once(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    h = make()
    first = delivery(receiver.url())
    assert (await h.worker.deliver_once(first)).result == "ok"  # a connection to keep
    receiver.hang_up = 1  # the receiver closes it as the next request arrives
    d = delivery(receiver.url())
    outcome = await h.worker.deliver_once(d)
    assert (outcome.result, outcome.attempts) == ("ok", 1)  # one attempt, on a new connection
    assert [r.body for r in receiver.requests] == [first.body, d.body, d.body]


async def test_an_event_for_a_busy_endpoint_notified_during_a_read_is_not_forgotten(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.gate = asyncio.Event()
    h = make(per_endpoint_concurrency=1, initial_concurrency=1, poll_interval=30.0)
    first = delivery(receiver.url("/a"))
    h.store.add(first)
    h.start()
    await wait_until(lambda: len(receiver.requests) == 1)  # /a's only slot is busy
    h.store.read_gate = asyncio.Event()
    other = delivery(receiver.url("/b"))
    h.store.add(other)
    h.worker.notify([other])  # a new endpoint: a read starts, and sees the outbox now
    await asyncio.sleep(0.05)
    late = delivery(receiver.url("/a"))
    h.store.add(late)
    h.worker.notify([late])  # /a is busy: nothing to read now, but it has more
    h.store.read_gate.set()
    receiver.gate.set()
    # the read did not see `late`; /a's slot frees and it is read then (not at the tick)
    await wait_until(lambda: all(r.status == "delivered" for r in h.store.rows.values()),
                     within=10)


async def test_a_backlog_of_one_endpoint_does_not_hide_the_events_of_another(
    receiver: Receiver, make: Callable[..., Harness]
) -> None:
    receiver.gate = asyncio.Event()  # the CRM at /a is stuck
    h = make(per_endpoint_concurrency=1, initial_concurrency=1, poll_interval=30.0)
    backlog = [delivery(receiver.url("/a"), created_at=time.time() - 60) for _ in range(1000)]
    h.store.add(*backlog)
    h.start()
    await wait_until(lambda: len(receiver.requests) == 1)
    alert = delivery(receiver.url("/b"))  # newer than the whole backlog
    h.store.add(alert)
    h.worker.notify([alert])
    await wait_until(lambda: any(r.path == "/b" for r in receiver.requests), within=10)
    assert [r.path for r in receiver.requests] == ["/a", "/b"]
    receiver.gate.set()
