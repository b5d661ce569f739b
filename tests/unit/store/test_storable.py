"""A record with a field no store can write (a lone surrogate) is written without that
field, never refused, on both stores; so are the records sharing its write, the visitor's
session, the statistics and crash recovery's open-calls query."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from test_store_sqlite import T0, call, session

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.store.codec import storable_call
from calltrackd.tracking.model import Attribution


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (f"sqlite://{tmp_path}/calltrackd.db" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    s = create_store(url)
    s.node_id = "node-a"
    await s.open()
    yield s
    await s.close()


async def test_a_bad_field_is_dropped_and_the_record_written(store: Store) -> None:
    bad = session("s_bad", utm_source="x\ud800", custom={"k\udc00": "v", "ok": "y\ud800",
                                                         "fine": "z"})
    await store.create_session(bad, dynamic=True)
    record = call("c_bad", attribution=Attribution("dynamic", session=bad))
    good = call("c_good", minutes=1)
    # in one write batch with a good record: both land
    await asyncio.gather(store.save_call(record), store.save_call(good))
    got = await store.get_call("c_bad")
    assert got is not None and got.attribution is not None and got.attribution.session
    assert got.attribution.session.utm_source is None
    assert got.attribution.session.utm_medium == "cpc"  # the rest of the session is kept
    assert got.attribution.session.custom == {"fine": "z"}
    assert await store.get_call("c_good") == good
    assert {c.id for c in (await store.list_calls())[0]} == {"c_bad", "c_good"}
    assert await store.call_stats() and await store.visitor_stats()
    # later session writes are not poisoned
    await store.create_session(session("s_next"), dynamic=False)
    assert await store.visitor_stats()


async def test_open_calls_and_heartbeat(store: Store) -> None:
    assert await store.last_heartbeat() is None
    await store.heartbeat(1234.5)
    await store.heartbeat(1236.5)
    assert await store.last_heartbeat() == 1236.5
    await store.save_call(call("c_open"))
    await store.save_call(call("c_later", minutes=10))
    await store.save_call(call("c_done", minutes=2))
    await store.save_call(call("c_done", minutes=2, ended_at=T0 + timedelta(minutes=3),
                               outcome="answered"))
    before = (T0 + timedelta(minutes=5)).timestamp()
    assert [c.id for c in await store.open_calls(before)] == ["c_open"]


def test_clean_records_are_passed_through_untouched() -> None:
    record = call("c_1", attribution=Attribution("dynamic", session=session()))
    assert storable_call(record) is record


async def test_a_shared_redis_keeps_each_nodes_open_calls_apart(redis_url: str) -> None:
    a, b = create_store(redis_url), create_store(redis_url)
    a.node_id, b.node_id = "node-a", "node-b"
    for s in (a, b):
        await s.open()
    try:
        await a.save_call(call("c_a"))
        await b.save_call(call("c_b"))
        await a.heartbeat(100.0)
        await b.heartbeat(200.0)
        later = (T0 + timedelta(hours=1)).timestamp()
        assert [c.id for c in await a.open_calls(later)] == ["c_a"]
        assert [c.id for c in await b.open_calls(later)] == ["c_b"]
        assert (await a.last_heartbeat(), await b.last_heartbeat()) == (100.0, 200.0)
        await a.save_call(call("c_a", outcome="failed", ended_at=T0))
        assert await a.open_calls(later) == []
    finally:
        for s in (a, b):
            await s.close()


async def test_stats_survive_odd_stored_data(store: Store, redis_url: str) -> None:
    # a visitor's utm_source holding the Redis counters' separator, and a CDR that is not
    # JSON (written by hand): /v1/stats still answers
    await store.create_session(session("s_sep", utm_source="a\x1fb"), dynamic=True)
    await store.save_call(call("c_ok"))
    if type(store).__name__ == "RedisStore":
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_url)
        await r.set("ctd:call:c_ok", b"\xff not json")
        await r.aclose()
    assert [v.utm_source for v in await store.visitor_stats()] == ["a b" if type(
        store).__name__ == "RedisStore" else "a\x1fb"]
    await store.call_stats()
