"""One behaviour, two stores: every test here runs against the embedded SQLite store and
against the Redis store on a real redis-server (started by conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from test_store_sqlite import NUMBERS, T0, TRACKER, call, delivery, session

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.tracking.model import (
    ANONYMOUS_CALLERS,
    Attribution,
    CallRecord,
    ForwardTarget,
    Pool,
    Tracker,
    is_anonymous,
)
from calltrackd.tracking.reports import ReportQuery


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (f"sqlite://{tmp_path}/calltrackd.db" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    s = create_store(url)
    await s.open()
    yield s
    await s.close()


async def test_unleased_deliveries_are_due_again_at_once(store: Store) -> None:
    await store.save_call(call("c_1"), [delivery("d_1", at=100.0), delivery("d_2", at=101.0)])
    assert [d.id for d in await store.due_deliveries(101.0, 10)] == ["d_1", "d_2"]
    # the worker could start only d_1 (endpoint busy): d_2 goes back to the outbox now
    await store.unlease(["d_2"])
    assert "d_2" in {d.id for d in await store.due_deliveries(101.5, 10)}
    await store.reschedule("d_2", 1, 200.0, "HTTP 503")
    await store.unlease(["d_2"])  # keeps its own next attempt time
    assert "d_2" not in {d.id for d in await store.due_deliveries(150.0, 10)}
    assert "d_2" in {d.id for d in await store.due_deliveries(200.0, 10)}
    await store.mark_delivered("d_2", 201.0)
    await store.unlease(["d_2"])  # an acknowledged row is not resurrected
    assert "d_2" not in {d.id for d in await store.due_deliveries(300.0, 10)}


async def test_call_record_round_trips_and_updates(store: Store) -> None:
    record = call(
        "c_1", answered_at=T0 + timedelta(seconds=4.2), ended_at=T0 + timedelta(seconds=67.2),
        ring_seconds=4.2, talk_seconds=63.0, outcome="answered", sip_code=200,
        hangup_by="caller", target="sip:pbx.acme.example:5060;transport=udp",
        first_time_caller=True, qualified=True,
        attribution=Attribution("dynamic", session=session()),
    )
    await store.save_call(call("c_1"))
    await store.save_call(record)
    assert await store.get_call("c_1") == record
    assert await store.get_call("c_missing") is None
    assert len((await store.list_calls())[0]) == 1


async def test_calls_list_newest_first_with_filters_and_cursor(store: Store) -> None:
    await store.save_call(call("c_a", 0, outcome="answered"))
    await store.save_call(call("c_b", 10, outcome="busy"))
    await store.save_call(call("c_c", 20, outcome="answered", tracker="other"))
    await store.save_call(call("c_d", 30))

    def ids(calls: list[CallRecord]) -> list[str]:
        return [c.id for c in calls]

    assert ids((await store.list_calls())[0]) == ["c_d", "c_c", "c_b", "c_a"]
    assert ids((await store.list_calls(tracker="acme"))[0]) == ["c_d", "c_b", "c_a"]
    assert ids((await store.list_calls(outcome="answered"))[0]) == ["c_c", "c_a"]
    since, until = T0 + timedelta(minutes=10), T0 + timedelta(minutes=30)
    assert ids((await store.list_calls(since=since, until=until))[0]) == ["c_c", "c_b"]
    for i in range(25):
        await store.save_call(call(f"c_{i:02d}", 100 + i // 3, tracker="paged"))
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.list_calls(tracker="paged", limit=7, cursor=cursor)
        seen += ids(page)
        if cursor is None:
            break
    assert len(seen) == 25 == len(set(seen))
    with pytest.raises(ValueError):
        await store.list_calls(cursor="nonsense")


async def test_sessions_and_callers(store: Store) -> None:
    await store.create_session(session(), dynamic=False)
    assert await store.get_session("s_alice") == session()
    await store.touch_session("s_alice", 2000.0, dynamic=True)
    touched = await store.get_session("s_alice")
    assert touched is not None and touched.last_seen == 2000.0
    assert await store.get_session("s_nobody") is None
    assert not await store.caller_seen("acme", "+79161234567")
    await store.save_call(call("c_1"))
    assert await store.caller_seen("acme", "+79161234567")
    assert not await store.caller_seen("other", "+79161234567")


@pytest.mark.parametrize("caller", [*sorted(ANONYMOUS_CALLERS), "Anonymous", " Private "])
async def test_an_anonymous_caller_is_no_caller_in_either_store(store: Store,
                                                                 caller: str) -> None:
    """One rule (tracking/model.py's is_anonymous): no caller history, no distinct caller
    in reports, in the SQLite and the Redis store alike."""
    assert is_anonymous(caller)
    await store.save_call(call("c_anon", caller=caller))
    await store.save_call(call("c_known"))
    assert not await store.caller_seen("acme", caller)
    assert await store.caller_seen("acme", "+79161234567")
    [group] = await store.report_calls(ReportQuery(group_by=()))
    assert (group.calls, group.unique_callers) == (2, 1)


async def test_reservations_idle_longest_renew_release_and_holders(store: Store) -> None:
    await store.sync_pools([TRACKER])
    a = await store.reserve("acme", "paid", "s_a", 1000.0, 60.0)
    b = await store.reserve("acme", "paid", "s_b", 1001.0, 60.0)
    assert a is not None and b is not None and {a.number, b.number} == set(NUMBERS)
    assert await store.reserve("acme", "paid", "s_c", 1002.0, 60.0) is None  # exhausted
    again = await store.reserve("acme", "paid", "s_a", 1010.0, 60.0)
    assert again is not None and again.number == a.number and again.until == 1070.0
    renewed = await store.renew("s_b", 1020.0, 60.0)
    assert renewed is not None and renewed.number == b.number
    current, last = await store.holders(a.number, 1030.0)
    assert current is not None and current.session_id == "s_a" and last is None
    assert await store.release("s_a", 1040.0)
    current, last = await store.holders(a.number, 1041.0)
    assert current is None and last is not None and last.session_id == "s_a"
    assert last.until == 1040.0
    # s_b's reservation lapses at 1080; the number released longest ago goes first
    c = await store.reserve("acme", "paid", "s_c", 1100.0, 60.0)
    assert c is not None and c.number == a.number
    d = await store.reserve("acme", "paid", "s_d", 1100.0, 60.0)
    assert d is not None and d.number == b.number
    current, last = await store.holders(b.number, 1100.0)
    assert current is not None and current.session_id == "s_d"
    assert last is not None and last.session_id == "s_b"
    [stats] = await store.pool_stats(1100.0)
    assert (stats.size, stats.reserved, stats.free, stats.cooling) == (2, 2, 0, 0)
    assert stats.peak_all_time == 2 and stats.shortfall == 1


async def test_cooldown_keeps_a_released_number_resting(store: Store) -> None:
    tracker = Tracker(id="acme", public_key="pk", default_number="+74990000000",
                      forward=(ForwardTarget("sip:pbx"),), cooldown=30.0,
                      pools=(Pool("paid", ("*",), NUMBERS[:1]),))
    await store.sync_pools([tracker])
    assert await store.reserve("acme", "paid", "s_a", 1000.0, 60.0) is not None
    assert await store.release("s_a", 1010.0)
    assert await store.reserve("acme", "paid", "s_b", 1020.0, 60.0) is None  # cooling
    [stats] = await store.pool_stats(1020.0)
    assert stats.cooling == 1
    assert await store.reserve("acme", "paid", "s_b", 1041.0, 60.0) is not None


async def test_numbers_dropped_from_config_lose_their_reservations(store: Store) -> None:
    await store.sync_pools([TRACKER])
    await store.reserve("acme", "paid", "s_a", 1000.0, 60.0)
    smaller = Tracker(id="acme", public_key="pk_acme", default_number="+74990000000",
                      forward=TRACKER.forward, pools=(Pool("paid", ("*",), NUMBERS[:1]),))
    await store.sync_pools([smaller])
    [stats] = await store.pool_stats(1001.0)
    assert stats.size == 1
    await store.sync_pools([])
    assert await store.pool_stats(1002.0) == []


async def test_stats_from_calls_and_visitors(store: Store) -> None:
    await store.create_session(session("s_1", first_seen=T0.timestamp()), dynamic=True)
    await store.create_session(session("s_2", first_seen=T0.timestamp()), dynamic=False)
    await store.save_call(call("c_1", outcome="answered", qualified=True, first_time_caller=True,
                               attribution=Attribution("dynamic", session=session())))
    await store.save_call(call("c_2", 1, outcome="busy",
                               attribution=Attribution("default")))
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    stats = {(s.kind, s.utm_source): s for s in await store.call_stats("acme", *window)}
    dyn = stats[("dynamic", "google")]
    assert (dyn.calls, dyn.answered, dyn.qualified, dyn.first_time) == (1, 1, 1, 1)
    assert stats[("default", None)].missed == 1
    [vis] = await store.visitor_stats("acme", *window)
    assert (vis.utm_source, vis.utm_medium, vis.visitors, vis.dynamic) == ("google", "cpc", 2, 1)
    # both statistics at once, as /v1/stats asks: the same answers as each alone
    assert await store.window_stats("acme", *window) == (
        await store.call_stats("acme", *window), await store.attribution_stats("acme", *window))


# --- the webhook outbox ------------------------------------------------------------------
# Redis leases the rows due_deliveries hands out (another node must not send them too) and
# SQLite does not; `take` gives them back, so each poll below sees the outbox as it stands.


async def take(store: Store, now: float, limit: int = 10) -> list[str]:
    due = await store.due_deliveries(now, limit)
    await store.unlease([d.id for d in due])
    return [d.id for d in due]


async def test_outbox_hands_out_due_events_longest_due_first_as_enqueued(store: Store) -> None:
    late = replace(delivery("d_late", at=100.0), next_attempt_at=105.0)
    started = delivery("d_2", "call.started", at=102.0)
    await store.save_call(call("c_1"), [late, delivery("d_1", at=101.0), started])
    assert await store.pending_count() == 3
    assert await take(store, 100.5) == []
    assert await take(store, 102.0) == ["d_1", "d_2"]
    assert await take(store, 110.0, limit=2) == ["d_1", "d_2"]
    assert await take(store, 110.0) == ["d_1", "d_2", "d_late"]
    due = {d.id: d for d in await store.due_deliveries(110.0, 10)}
    assert due["d_2"] == started and due["d_late"] == late  # every field, the body's bytes


async def test_delivered_event_is_never_handed_out_or_resent_again(store: Store) -> None:
    await store.save_call(call("c_1"), [delivery("d_1"), delivery("d_2")])
    await store.mark_delivered("d_1", 150.0)
    assert await take(store, 200.0) == ["d_2"]
    assert await store.pending_count() == 1
    [done] = await store.list_deliveries("delivered", 10)
    assert (done.id, done.status, done.attempts, done.last_error) == ("d_1", "delivered", 1, None)
    assert not await store.requeue("d_1", 300.0)
    # the CDR written again (a retried write) brings its events along: they stay as they are
    await store.save_call(call("c_1", outcome="answered"), [delivery("d_1"), delivery("d_2")])
    assert await take(store, 300.0) == ["d_2"]
    assert await store.pending_count() == 1


async def test_failed_attempt_waits_for_its_retry_time_keeping_count_and_error(
    store: Store
) -> None:
    await store.save_call(call("c_1"), [delivery("d_1", at=100.0)])
    assert [d.id for d in await store.due_deliveries(100.0, 10)] == ["d_1"]  # being sent
    await store.reschedule("d_1", 1, 160.0, "HTTP 503")
    assert await take(store, 159.0) == []
    [retry] = await store.due_deliveries(160.0, 10)
    assert (retry.attempts, retry.next_attempt_at, retry.last_error, retry.status) == (
        1, 160.0, "HTTP 503", "pending")
    await store.reschedule("d_1", 2, 220.0, "timeout")
    await store.save_call(call("c_1", outcome="answered"), [delivery("d_1", at=100.0)])
    assert await take(store, 219.0) == []  # the backoff holds, the CDR's rewrite aside
    assert await take(store, 220.0) == ["d_1"]
    assert await store.pending_count() == 1
    assert await store.list_deliveries("failed", 10) == []


async def test_given_up_event_is_listed_failed_and_resent_on_request(store: Store) -> None:
    await store.save_call(call("c_1"), [delivery("d_1", at=100.0), delivery("d_2", at=101.0)])
    await store.mark_failed("d_1", 12, "gave up after 24h")
    assert await take(store, 1000.0) == ["d_2"]
    assert await store.pending_count() == 1
    [failed] = await store.list_deliveries("failed", 10)
    assert (failed.id, failed.status, failed.attempts, failed.last_error) == (
        "d_1", "failed", 12, "gave up after 24h")
    assert await store.requeue("d_1", 2000.0)
    assert await store.list_deliveries("failed", 10) == []
    assert await store.pending_count() == 2
    assert await take(store, 1999.0) == ["d_2"]
    assert await take(store, 2000.0) == ["d_2", "d_1"]
    assert not await store.requeue("d_unknown", 2000.0)
    assert [d.id for d in await store.list_deliveries(None, 10)] == ["d_2", "d_1"]  # newest


async def test_rotation_counts_every_call_once_per_target_list(store: Store) -> None:
    """Hunt round_robin (b2bua/rotation.py): a call's count is its turn, so no two calls
    of a rotation get one count, also when they come at once."""
    assert [await store.rotate("acme:aa") for _ in range(3)] == [1, 2, 3]
    assert await store.rotate("acme:bb") == 1  # another target list: its own count
    assert await store.rotate("other:aa") == 1
    together = await asyncio.gather(*(store.rotate("acme:aa") for _ in range(40)))
    assert sorted(together) == list(range(4, 44))
    assert await store.rotate("acme:bb") == 2
