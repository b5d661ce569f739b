"""What only the Redis store does, against a real redis-server: leases on the outbox, atomic
allocation across several nodes (two RedisStore instances stand for two calltrackd nodes),
failing fast while Redis is down. The behaviour both stores share is in test_store_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_store_sqlite import call, delivery

from calltrackd.store import create_store
from calltrackd.store.base import Store, StoreError
from calltrackd.store.redis import RedisStore
from calltrackd.tracking.model import (
    ForwardTarget,
    Hold,
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


async def test_two_nodes_1000_concurrent_visitors_pool_of_100(redis_url: str) -> None:
    """1,000 visitors ask two nodes for a number of a pool of 100 at once: each number is
    handed out once, to one visitor. A node's pool of connections lets a burst wait 1 s
    for a connection and 0.5 s to open one; on a busy machine some requests fail so
    (StoreError) and the visitor asks again with its session, as the snippet does
    (reserving is idempotent per session: the retry gets the same hold or none)."""
    numbers = tuple(f"+7499200{i:04d}" for i in range(100))
    tracker = Tracker(id="acme", public_key="pk", default_number="+74990000000",
                      forward=(ForwardTarget("sip:pbx"),), pools=(Pool("web", ("*",), numbers),))
    nodes = [RedisStore(redis_url), RedisStore(redis_url)]
    for n in nodes:
        await n.open()
        await n.sync_pools([tracker])
    retries = 0

    async def visitor(i: int) -> Hold | None:
        nonlocal retries
        for attempt in range(40):
            try:
                return await nodes[i % 2].reserve("acme", "web", f"s_{i}", 5000.0, 360.0)
            except StoreError:
                retries += 1
                await asyncio.sleep(0.05 + 0.01 * attempt)
        raise AssertionError(f"visitor {i}: the store failed 40 times")

    try:
        holds = await asyncio.wait_for(asyncio.gather(*(visitor(i) for i in range(1000))),
                                       120)
        held = {n: await nodes[0].holders(n, 5000.0) for n in numbers}
    finally:
        for n in nodes:
            await n.close()
    got = [h.number for h in holds if h is not None]
    assert len(got) == 100 and sorted(got) == sorted(numbers), retries  # never held twice
    # and the store agrees: each number held by the one visitor it was handed to
    by_number = {h.number: h.session_id for h in holds if h is not None}
    assert len(set(by_number.values())) == 100  # and no visitor holds two
    assert {n: cur.session_id if cur else None for n, (cur, _) in held.items()} == by_number


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


async def test_two_nodes_share_the_rotation_counts(redis_url: str) -> None:
    """Hunt round_robin across nodes: calls taken by either node are counted in one
    sequence (INCR), so the nodes give the targets their turns together."""
    nodes = [RedisStore(redis_url), RedisStore(redis_url)]
    for n in nodes:
        await n.open()
    try:
        assert [await nodes[i % 2].rotate("acme:aa") for i in range(6)] == [1, 2, 3, 4, 5, 6]
        both = await asyncio.gather(*(n.rotate("acme:aa") for n in nodes * 20))
        assert sorted(both) == list(range(7, 47))
    finally:
        for n in nodes:
            await n.close()
