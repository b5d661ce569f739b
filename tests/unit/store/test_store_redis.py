"""The Redis store against a real redis-server: the same behaviour as the SQLite store,
atomic across several nodes (two RedisStore instances stand for two calltrackd nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from test_store_sqlite import NUMBERS, T0, TRACKER, call, delivery, session

from calltrackd.store import create_store
from calltrackd.store.base import Store, StoreError
from calltrackd.store.redis import RedisStore
from calltrackd.tracking.model import (
    Attribution,
    CallRecord,
    ForwardTarget,
    Pool,
    Tracker,
)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = create_store(redis_url)
    assert isinstance(s, RedisStore)
    await s.open()
    yield s
    await s.close()


def test_redis_store_satisfies_the_store_interface() -> None:
    store: Store = RedisStore("redis://127.0.0.1:1/0")
    assert store is not None


async def test_call_record_round_trips_and_updates(store: RedisStore) -> None:
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


async def test_calls_list_newest_first_with_filters_and_cursor(store: RedisStore) -> None:
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


async def test_outbox_lifecycle_with_leases(store: RedisStore) -> None:
    await store.save_call(call("c_1"), [delivery("d_1", at=100.0), delivery("d_2", at=101.0)])
    assert await store.pending_count() == 2
    assert [d.id for d in await store.due_deliveries(99.0, 10)] == []
    assert [d.id for d in await store.due_deliveries(101.0, 1)] == ["d_1"]
    # d_1 is leased to the first caller: a second node polling now gets only d_2
    assert [d.id for d in await store.due_deliveries(101.0, 10)] == ["d_2"]
    assert await store.due_deliveries(102.0, 10) == []
    await store.reschedule("d_1", 1, 160.0, "HTTP 503")
    [d1] = [d for d in await store.list_deliveries("pending", 10) if d.id == "d_1"]
    assert (d1.attempts, d1.next_attempt_at, d1.last_error) == (1, 160.0, "HTTP 503")
    await store.mark_failed("d_1", 12, "gave up after 24h")
    [failed] = await store.list_deliveries("failed", 10)
    assert (failed.id, failed.attempts) == ("d_1", 12)
    assert await store.requeue("d_1", 500.0)
    due = {d.id for d in await store.due_deliveries(500.0, 10)}
    assert "d_1" in due
    await store.mark_delivered("d_1", 501.0)
    await store.mark_delivered("d_2", 501.0)
    assert await store.pending_count() == 0
    assert not await store.requeue("d_1", 600.0)
    assert not await store.requeue("d_unknown", 600.0)
    delivered = await store.list_deliveries("delivered", 10)
    assert {d.id for d in delivered} == {"d_1", "d_2"}
    assert [d.body for d in delivered] == [b'{"event":"call.ended"}'] * 2
    # a retried write of the CDR does not resurrect acknowledged deliveries
    await store.save_call(call("c_1", outcome="answered"), [delivery("d_1")])
    assert await store.pending_count() == 0


async def test_lease_expires_so_another_node_retries(store: RedisStore, redis_url: str) -> None:
    other = RedisStore(redis_url)
    await other.open()
    try:
        await store.save_call(call("c_1"), [delivery("d_1", at=100.0)])
        assert [d.id for d in await store.due_deliveries(100.0, 10)] == ["d_1"]
        assert await other.due_deliveries(100.0, 10) == []  # leased by the first node
        # the first node died without an answer: after the lease the other node sends it
        assert [d.id for d in await other.due_deliveries(161.0, 10)] == ["d_1"]
    finally:
        await other.close()


async def test_sessions_and_callers(store: RedisStore) -> None:
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


async def test_reservations_idle_longest_renew_release_and_holders(store: RedisStore) -> None:
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


async def test_cooldown_keeps_a_released_number_resting(store: RedisStore) -> None:
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


async def test_two_nodes_1000_concurrent_visitors_pool_of_100(redis_url: str) -> None:
    numbers = tuple(f"+7499200{i:04d}" for i in range(100))
    tracker = Tracker(id="acme", public_key="pk", default_number="+74990000000",
                      forward=(ForwardTarget("sip:pbx"),), pools=(Pool("web", ("*",), numbers),))
    nodes = [RedisStore(redis_url), RedisStore(redis_url)]
    for n in nodes:
        await n.open()
        await n.sync_pools([tracker])
    try:
        holds = await asyncio.gather(*(
            nodes[i % 2].reserve("acme", "web", f"s_{i}", 5000.0, 360.0) for i in range(1000)))
    finally:
        for n in nodes:
            await n.close()
    got = [h.number for h in holds if h is not None]
    assert len(got) == 100 and sorted(got) == sorted(numbers)  # never held twice


async def test_numbers_dropped_from_config_lose_their_reservations(store: RedisStore) -> None:
    await store.sync_pools([TRACKER])
    await store.reserve("acme", "paid", "s_a", 1000.0, 60.0)
    smaller = Tracker(id="acme", public_key="pk_acme", default_number="+74990000000",
                      forward=TRACKER.forward, pools=(Pool("paid", ("*",), NUMBERS[:1]),))
    await store.sync_pools([smaller])
    [stats] = await store.pool_stats(1001.0)
    assert stats.size == 1
    await store.sync_pools([])
    assert await store.pool_stats(1002.0) == []


async def test_stats_from_calls_and_visitors(store: RedisStore) -> None:
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


async def test_redis_down_raises_store_error_quickly(redis_server: Any) -> None:
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        await store.ping()
        redis_server.stop()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StoreError):
            await store.ping()
        with pytest.raises(StoreError):
            await store.save_call(call("c_1"))
        assert loop.time() - t0 < 3.0
        redis_server.start()
        await asyncio.sleep(0.2)
        await store.ping()  # it comes back without a restart
    finally:
        await store.close()
        if redis_server.proc is None:
            redis_server.start()
