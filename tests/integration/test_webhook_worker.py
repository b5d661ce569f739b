"""The webhook worker over the real SQLite outbox: a receiver down for the first 3 attempts,
the worker and store restarted in between; the event arrives once acknowledged, always
with one event_id and a valid signature, and is not sent again after another restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.model import CallRecord, WebhookEndpoint
from calltrackd.webhooks.backoff import ExponentialJitterBackoff
from calltrackd.webhooks.payload import build_deliveries
from calltrackd.webhooks.signing import verify
from calltrackd.webhooks.worker import WebhookWorker

SECRET = "whsec_it"


@dataclass
class Receiver:
    url: str = ""
    failures_left: int = 0
    seen: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 503 if self.failures_left > 0 else 200
        self.failures_left -= 1
        self.seen.append((dict(request.headers), body, status))
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    rx.url = f"http://{host}:{port}/hook"
    yield rx
    await runner.cleanup()


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Node:
    """One run of the daemon's webhook side: a store on the file and a worker over it."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(str(path))
        self.worker = WebhookWorker(
            self.store,
            lambda tracker, url: SECRET,
            backoff=ExponentialJitterBackoff(base=0.02, cap=0.05),
            poll_interval=0.02,
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.open()
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        await self.store.close()


async def test_event_survives_receiver_outage_and_restart_and_arrives_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.failures_left = 3
    db = tmp_path / "calltrackd.db"
    record = CallRecord(
        id="c_it",
        tracker="acme",
        did="+74990000001",
        caller="+79161234567",
        started_at=datetime(2026, 11, 22, 10, 2, 5, tzinfo=UTC),
        ended_at=datetime(2026, 11, 22, 10, 3, 12, tzinfo=UTC),
        outcome="cancelled",
    )
    (delivery,) = build_deliveries(
        "call.ended", record, [WebhookEndpoint(receiver.url, SECRET)], time.time()
    )

    first = Node(db)
    await first.start()
    await first.store.save_call(record, [delivery])
    first.worker.notify()
    await wait_until(lambda: len(receiver.seen) >= 2)
    await first.shutdown()  # restart while the receiver is still failing
    failed_before_restart = len(receiver.seen)
    assert all(status == 503 for _, _, status in receiver.seen)

    second = Node(db)
    await second.start()
    await wait_until(lambda: any(status == 200 for _, _, status in receiver.seen))
    await asyncio.sleep(0.1)
    (row,) = await second.store.list_deliveries("delivered", 10)
    await second.shutdown()

    third = Node(db)  # acknowledged before: nothing is sent again
    await third.start()
    await asyncio.sleep(0.2)
    await third.shutdown()

    assert failed_before_restart in (2, 3)
    assert [status for _, _, status in receiver.seen] == [503, 503, 503, 200]
    assert row.id == delivery.id and row.attempts == 4
    for headers, body, _ in receiver.seen:
        assert body == delivery.body
        assert headers["X-Calltrackd-Delivery"] == delivery.event_id
        assert verify(SECRET, body, headers["X-Calltrackd-Signature"])


async def test_a_backlog_drains_without_sending_an_acknowledged_event_twice(
    tmp_path: Path, receiver: Receiver
) -> None:
    # Polls read the outbox while deliveries finish: a row acknowledged during a read comes
    # back from it as still pending, and must not be sent again.
    node = Node(tmp_path / "calltrackd.db")
    await node.start()
    endpoint = [WebhookEndpoint(receiver.url, SECRET)]
    events = 600

    async def save(i: int) -> None:
        record = CallRecord(id=f"c_{i}", tracker="acme", did="+74990000001",
                            caller="+79161234567", started_at=datetime.now(UTC),
                            outcome="answered")
        await node.store.save_call(record, build_deliveries("call.started", record, endpoint,
                                                            time.time()))
        node.worker.notify()  # as the daemon does after each write, while others are sent

    for start in range(0, events, 50):
        await asyncio.gather(*(save(i) for i in range(start, start + 50)))

    def ids() -> set[str]:
        return {h["X-Calltrackd-Delivery"] for h, _, _ in receiver.seen}

    await wait_until(lambda: len(ids()) == events, within=30)
    await asyncio.sleep(0.3)
    await node.shutdown()
    assert len(receiver.seen) == events, f"{len(receiver.seen) - events} sent twice"
