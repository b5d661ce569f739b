import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from calltrackd.store.base import StoreError
from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.model import (
    CallRecord,
    ForwardTarget,
    Pool,
    SessionInput,
    StaticNumber,
    Tracker,
    WebhookDelivery,
)
from calltrackd.tracking.service import TrackingService

POOL = tuple(f"+7499100{i:04d}" for i in range(100))
TRACKER = Tracker(
    id="acme",
    public_key="pk_acme",
    default_number="+74990000000",
    forward=(ForwardTarget("sip:pbx.acme.example"),),
    reservation_ttl=360.0,
    pools=(Pool("paid", ("google/cpc", "yandex/*"), POOL),),
    static=(StaticNumber("+74990000100", "billboard"),),
)
GOOGLE = SessionInput(client_id="GA1.2.111.222", utm_source="google", utm_medium="cpc",
                      utm_campaign="spring", custom={"product_id": "42"})


def visitor(n: int) -> SessionInput:
    """GOOGLE's visit by another person (visitors are told apart by their ids)."""
    return replace(GOOGLE, client_id=f"GA1.2.{n}.1")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: SqliteStore, clock: Clock) -> TrackingService:
    return TrackingService(store, [TRACKER], clock=clock)


async def test_visitor_from_a_tracked_source_gets_a_dynamic_number(
    service: TrackingService, clock: Clock
) -> None:
    answer = await service.create_session(TRACKER, GOOGLE, None, clock.now)
    assert answer.kind == "dynamic" and answer.number == POOL[0]
    assert answer.expires_at == clock.now + 360.0
    assert answer.session_id.startswith("s_") and len(answer.session_id) == 24


async def test_untracked_source_gets_the_default_number(
    service: TrackingService, clock: Clock
) -> None:
    answer = await service.create_session(TRACKER, SessionInput(), None, clock.now)
    assert (answer.kind, answer.number) == ("default", TRACKER.default_number)


async def test_same_session_renews_and_keeps_its_number(
    service: TrackingService, clock: Clock
) -> None:
    first = await service.create_session(TRACKER, GOOGLE, None, clock.now)
    clock.now += 300
    again = await service.create_session(TRACKER, GOOGLE, first.session_id, clock.now)
    assert (again.session_id, again.number) == (first.session_id, first.number)
    assert again.expires_at == clock.now + 360.0
    clock.now += 300
    pinged = await service.ping(first.session_id)
    assert pinged is not None and pinged.number == first.number


async def test_unknown_or_foreign_session_id_starts_a_new_session(
    service: TrackingService, clock: Clock
) -> None:
    forged = await service.create_session(TRACKER, GOOGLE, "s_" + "x" * 22, clock.now)
    assert forged.session_id != "s_" + "x" * 22
    other = Tracker(id="other", public_key="pk_o", default_number="+74990000999", forward=())
    theirs = await service.create_session(other, GOOGLE, None, clock.now)
    mine = await service.create_session(TRACKER, GOOGLE, theirs.session_id, clock.now)
    assert mine.session_id != theirs.session_id
    assert await service.ping("garbage") is None


async def test_thousand_concurrent_visitors_share_a_pool_of_a_hundred(
    service: TrackingService, clock: Clock
) -> None:
    # a thousand people, each with their own analytics id: one visitor's tabs would share
    # their live visit (and its number), in whatever order the store's answers arrive
    answers = await asyncio.gather(
        *(service.create_session(TRACKER, visitor(n), None, clock.now) for n in range(1000))
    )
    dynamic = [a.number for a in answers if a.kind == "dynamic"]
    assert len(dynamic) == 100
    assert len(set(dynamic)) == 100
    assert all(a.number == TRACKER.default_number for a in answers if a.kind == "default")
    [stats] = await service.store.pool_stats(clock.now)
    assert (stats.reserved, stats.free, stats.shortfall, stats.peak_all_time) == (100, 0, 900, 100)


async def test_call_to_a_visitors_number_is_attributed_to_the_visitor(
    service: TrackingService, clock: Clock
) -> None:
    answer = await service.create_session(TRACKER, GOOGLE, None, clock.now)
    att, first = await service.attribute(TRACKER, answer.number, "+79161234567", clock.now + 60)
    assert att.kind == "dynamic"
    assert att.session is not None and att.session.utm_campaign == "spring"
    assert att.session.client_id == "GA1.2.111.222"
    assert first is True


async def test_call_after_the_visitor_left_is_attributed_as_expired(
    service: TrackingService, clock: Clock
) -> None:
    answer = await service.create_session(TRACKER, GOOGLE, None, clock.now)
    att, _ = await service.attribute(TRACKER, answer.number, "+79161234567", clock.now + 1200)
    assert att.kind == "expired" and att.session is not None
    assert att.session.id == answer.session_id


async def test_repeat_caller_is_recognised_after_the_first_call_is_recorded(
    service: TrackingService, clock: Clock
) -> None:
    caller = "+79161234567"
    _, first = await service.attribute(TRACKER, "+74990000100", caller, clock.now)
    assert first is True
    await service.record_call(record("c_1", caller=caller))
    att, first = await service.attribute(TRACKER, "+74990000100", caller, clock.now)
    assert (att.kind, att.channel, first) == ("static", "billboard", False)


def record(cid: str, **kw: Any) -> CallRecord:
    fields: dict[str, Any] = {"tracker": "acme", "did": "+74990000100", "caller": "+7916",
                              "started_at": datetime(2026, 11, 22, tzinfo=UTC)}
    fields.update(kw)
    return CallRecord(cid, **fields)


def delivery(did: str) -> WebhookDelivery:
    return WebhookDelivery(did, "evt_" + did, "call.ended", "acme", "https://x", b"{}", 1.0)


class FlakyStore:
    """A store whose writes fail while `down` is set."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.down = True
        self.saves = 0

    async def save_call(self, rec: CallRecord, deliveries: Sequence[WebhookDelivery] = ()) -> None:
        self.saves += 1
        if self.down:
            raise StoreError("down")
        await self.inner.save_call(rec, deliveries)

    async def holders(self, number: str, now: float) -> Any:
        raise StoreError("down")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_records_wait_in_memory_while_the_store_is_down(store: SqliteStore) -> None:
    flaky = FlakyStore(store)
    service = TrackingService(flaky, [TRACKER])
    await service.record_call(record("c_1"), [delivery("d_started")])
    await service.record_call(record("c_1", outcome="answered"), [delivery("d_ended")])
    await service.record_call(record("c_2"))
    assert service.pending_records == 2
    stop = asyncio.Event()
    flusher = asyncio.create_task(service.run_flusher(stop, first_delay=0.01))
    await asyncio.sleep(0.05)
    flaky.down = False
    for _ in range(200):
        if service.pending_records == 0:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await flusher
    assert service.pending_records == 0
    got = await store.get_call("c_1")
    assert got is not None and got.outcome == "answered"  # the newest version won
    assert {d.id for d in await store.due_deliveries(10.0, 10)} == {"d_started", "d_ended"}
    assert await store.get_call("c_2") is not None


async def test_pending_queue_is_bounded(store: SqliteStore) -> None:
    service = TrackingService(FlakyStore(store), [TRACKER], pending_limit=3)
    for i in range(5):
        await service.record_call(record(f"c_{i}"))
    assert service.pending_records == 3
    assert service.dropped_records == 2


async def test_store_failure_during_attribution_forwards_unattributed(
    store: SqliteStore, clock: Clock
) -> None:
    service = TrackingService(FlakyStore(store), [TRACKER], clock=clock)
    att, first = await service.attribute(TRACKER, POOL[0], "+79161234567", clock.now)
    assert att.kind == "none" and att.error == "store: StoreError"
    assert first is None


async def test_store_failure_during_session_creation_shows_the_default_number(
    tmp_path: Path, clock: Clock
) -> None:
    closed = SqliteStore.from_url(f"sqlite://{tmp_path}/closed.db")
    service = TrackingService(closed, [TRACKER], clock=clock)
    answer = await service.create_session(TRACKER, GOOGLE, None, clock.now)
    assert (answer.kind, answer.number) == ("default", TRACKER.default_number)


async def test_config_reload_adds_numbers_to_the_pool(
    service: TrackingService, clock: Clock
) -> None:
    small = Tracker(id="acme", public_key="pk_acme", default_number="+74990000000", forward=(),
                    pools=(Pool("paid", ("*",), POOL[:1]),))
    service.update_trackers([small])
    assert (await service.create_session(small, visitor(1), None, clock.now)).kind == "dynamic"
    assert (await service.create_session(small, visitor(2), None, clock.now)).kind == "default"
    bigger = Tracker(id="acme", public_key="pk_acme", default_number="+74990000000", forward=(),
                     pools=(Pool("paid", ("*",), POOL[:2]),))
    service.update_trackers([bigger])
    assert service.tracker_by_key("pk_acme") is bigger
    assert (await service.create_session(bigger, visitor(3), None, clock.now)).number == POOL[1]


async def test_shutdown_flush_writes_deferred_records_once_the_store_answers(
    store: SqliteStore,
) -> None:
    flaky = FlakyStore(store)
    service = TrackingService(flaky, [TRACKER])
    await service.record_call(record("c_1"))
    assert not await service.flush(timeout=0.05)  # still down: gives up in time
    flaky.down = False
    assert await service.flush(timeout=1.0)
    assert await store.get_call("c_1") is not None


class Child:
    def __init__(self, parent: "Gauge", key: tuple[str, ...]) -> None:
        self.parent, self.key = parent, key

    def set(self, value: float) -> None:
        self.parent.values[self.key] = value


class Gauge:
    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}
        self.value = 0.0

    def labels(self, *values: str) -> Child:
        return Child(self, values)

    def set(self, value: float) -> None:
        self.value = value


class Gauges:
    def __init__(self) -> None:
        self.pool_numbers, self.coverage, self.cdr_backlog = Gauge(), Gauge(), Gauge()


async def test_gauges_show_pool_states_and_coverage(
    service: TrackingService, store: SqliteStore, clock: Clock
) -> None:
    for n in range(3):
        await service.create_session(TRACKER, visitor(n), None, clock.now)
    await service.create_session(TRACKER, SessionInput(utm_source="bing", utm_medium="cpc"),
                                 None, clock.now)
    await store.close()  # sessions are written behind; closing flushes them
    await store.open()
    await service.start()
    gauges = Gauges()
    await service.export_gauges(gauges)
    assert gauges.pool_numbers.values[("acme", "paid", "reserved")] == 3
    assert gauges.pool_numbers.values[("acme", "paid", "free")] == 97
    assert gauges.coverage.values[("acme",)] == 0.75
    assert gauges.cdr_backlog.value == 0


def test_store_built_from_the_config_url() -> None:
    assert SqliteStore("sqlite:///var/lib/calltrackd/calltrackd.db").path == (
        "/var/lib/calltrackd/calltrackd.db"
    )
