"""A tracker's delay model (tracking/confidence.py) is rebuilt at start-up from the stored
call records: a restarted service on the same SQLite store has the model it had learned
(exactly for calls with one candidate, closely for shared numbers)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from calltrackd import ids
from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.confidence import DelayLearner, DelayModel
from calltrackd.tracking.model import CallRecord, ForwardTarget, Pool, SessionInput, Tracker
from calltrackd.tracking.service import TrackingService

WIDE = Tracker("acme", "pk_acme", "+74990000000", (ForwardTarget("sip:pbx.example"),),
               reservation_ttl=360.0,
               pools=(Pool("paid", ("*",), tuple(f"+7499100{i:04d}" for i in range(50))),))
ONE = Tracker("solo", "pk_solo", "+74990000001", (ForwardTarget("sip:pbx.example"),),
              reservation_ttl=360.0, pools=(Pool("web", ("*",), ("+74992000000",)),))
PAID = SessionInput(utm_source="google", utm_medium="cpc")
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def call(service: TrackingService, tracker: Tracker, did: str, at: float) -> None:
    """A call to `did` at `at`, attributed and recorded as the call engine does."""
    att, first = await service.attribute(tracker, did, "+79160000000", at)
    await service.record_call(CallRecord(
        "c_" + ids.token_hex(8), tracker.id, did, "+79160000000", datetime.fromtimestamp(at, UTC),
        ended_at=datetime.fromtimestamp(at + 30, UTC), outcome="answered",
        first_time_caller=first, attribution=att))


def shares(m: DelayModel) -> list[float]:
    return [m.during, *m.after]


async def restarted(store: SqliteStore, trackers: list[Tracker], clock: Clock
                    ) -> TrackingService:
    await store.close()  # written behind: closing flushes
    await store.open()
    again = TrackingService(store, trackers, clock=clock)
    await again.start()
    await again.run_rebuild(asyncio.Event())  # the daemon's worker, run to its end
    return again


async def test_calls_with_one_candidate_rebuild_the_model_exactly(store: SqliteStore) -> None:
    clock = Clock()
    service = TrackingService(store, [WIDE], clock=clock)
    for i in range(12):
        at = T0 + i * 7200.0
        clock.now = at
        answer = await service.create_session(WIDE, PAID, None, at)
        # half call while on the site, half 20 minutes after leaving (expired)
        await call(service, WIDE, answer.number, at + (30.0 if i % 2 else 1200.0))
    clock.now = T0 + 30 * 3600.0
    live = service.delay_models.get("acme", 360.0)
    assert live.calls == 12
    again = await restarted(store, [WIDE], clock)
    rebuilt = again.delay_models.get("acme", 360.0)
    assert rebuilt.calls == 12
    assert shares(rebuilt.model) == pytest.approx(shares(live.model), abs=1e-9)
    assert shares(rebuilt.model) != pytest.approx(shares(DelayModel.prior(360.0)), abs=1e-3)


async def test_a_shared_number_rebuilds_close_to_what_was_learned(store: SqliteStore) -> None:
    clock = Clock()
    service = TrackingService(store, [ONE], clock=clock)
    for i in range(10):  # A leaves, B takes the number 10 minutes later, a call in between
        base = T0 + i * 43200.0
        a = await service.create_session(ONE, PAID, None, base)
        await service.store.release(a.session_id, base + 1.0)
        b = await service.create_session(ONE, PAID, None, base + 600.0)
        assert a.number == b.number
        await call(service, ONE, b.number, base + 630.0)
    clock.now = T0 + 5 * 86400.0
    live = service.delay_models.get("solo", 360.0)
    again = await restarted(store, [ONE], clock)
    rebuilt = again.delay_models.get("solo", 360.0)
    assert rebuilt.calls == live.calls == 10
    assert shares(rebuilt.model) == pytest.approx(shares(live.model), abs=0.005)


async def test_a_store_that_cannot_list_calls_leaves_the_prior(store: SqliteStore) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk")

    store.list_calls = broken  # type: ignore[method-assign,assignment]
    service = TrackingService(store, [WIDE])
    await service.run_rebuild(asyncio.Event())  # logged, not raised: the prior serves
    assert service.delay_models.get("acme", 360.0).calls == 0


def test_a_record_gives_its_named_visitor_the_share_a_live_call_gave() -> None:
    live, rebuilt = DelayLearner(360.0, strength=10), DelayLearner(360.0, strength=10)
    from calltrackd.tracking.model import Hold

    now = 50_000.0
    gone = Hold("+1", "s_gone", "t", "web", now - 3000.0, now - 1200.0 + 360.0)
    live.observe_call([gone], now)
    rebuilt.observe_record("expired", 1.0, now - 1200.0, now, 1800.0)
    assert shares(rebuilt.model) == pytest.approx(shares(live.model))
    nobody = DelayLearner(360.0, strength=10)
    nobody.observe_record("none", 0.0, 0.0, now, 1800.0)  # all of it beyond the grace
    before = DelayModel.prior(360.0)
    assert nobody.model.after_cdf(360.0 + 1800.0) < before.after_cdf(360.0 + 1800.0)
    assert nobody.model.during < before.during
