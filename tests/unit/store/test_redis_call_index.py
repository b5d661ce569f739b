"""The Redis store's index of calls by channel, source, campaign, tag and carrier (GET
/v1/calls's filters) and its one pass over the CDRs for /v1/stats, against a real
redis-server: a rare filter reads the calls that have its value, not every CDR; calls
saved before the index are filed by the backfill at open; the purge takes calls out of it;
the index is only ever checked, never trusted, so a call whose tags changed is not found
under its old ones. How many keys a request reads is Redis's own count (INFO keyspace
hits and misses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from test_store_sqlite import T0, call, session

from calltrackd.store import create_store
from calltrackd.store.codec import call_matches
from calltrackd.store.redis import RedisStore
from calltrackd.tracking.model import Attribution, CallRecord

BILLBOARD = Attribution("static", channel="billboard")


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = await _opened(redis_url)
    yield s
    await s.close()


async def _opened(url: str) -> RedisStore:
    s = create_store(url)
    assert isinstance(s, RedisStore)
    await s.open()
    for _ in range(600):  # the backfill runs in the background: up to 30 s
        if await s.r.get("ctd:cibackfill") == b"done":
            return s
        await asyncio.sleep(0.05)
    raise AssertionError("the index backfill did not finish")


async def _reads(store: RedisStore, coro: Any) -> tuple[int, Any]:
    """(keys Redis looked up while `coro` ran, its result)."""
    async def looked_up() -> int:
        stats = await store.r.info("stats")
        return int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])

    before = await looked_up()
    result = await coro
    return await looked_up() - before, result


def _ids(page: tuple[list[CallRecord], str | None]) -> list[str]:
    return [c.id for c in page[0]]


async def _many(store: RedisStore, n: int, tracker: str = "acme") -> list[CallRecord]:
    paid = Attribution("dynamic", session=session(channel="paid", source="google",
                                                  medium="cpc"))
    calls = [call(f"c_{tracker}_{i:03d}", i, tracker=tracker, attribution=paid,
                  outcome="answered") for i in range(n)]
    for c in calls:  # one at a time: a loaded machine's connection timeouts
        await store.save_call(c)
    return calls


async def test_a_rare_filter_reads_only_the_calls_that_have_its_value(
        store: RedisStore) -> None:
    await _many(store, 300)
    await store.save_call(call("c_bb1", 40.5, attribution=BILLBOARD))
    await store.save_call(call("c_bb2", 250.5, attribution=BILLBOARD))
    await store.save_call(call("c_sbc", 120.5, carrier="sbc-b"))
    sofa = await store.get_call("c_acme_100")
    assert sofa is not None
    await store.update_call(replace(sofa, tags=("sofa",)))

    reads, page = await _reads(store, store.list_calls(tracker="acme",
                                                       where={"channel": "billboard"}))
    assert _ids(page) == ["c_bb2", "c_bb1"] and reads < 20
    reads, page = await _reads(store, store.list_calls(tracker="acme", where={"tag": "sofa"}))
    assert _ids(page) == ["c_acme_100"] and reads < 20
    reads, page = await _reads(store, store.list_calls(tracker="acme",
                                                       where={"carrier": "sbc-b"}))
    assert _ids(page) == ["c_sbc"] and reads < 20
    for where in ({"channel": "nosuch"}, {"source": "nosuch"}, {"campaign": "nosuch"},
                  {"tag": "nosuch"}, {"carrier": "nosuch"},
                  {"channel": "billboard", "tag": "sofa"}):
        reads, page = await _reads(store, store.list_calls(tracker="acme", where=where))
        assert _ids(page) == [] and reads < 10, where
    # a common value pages through its own calls; what the index does not hold (the
    # outcome) still reads every CDR: the count above is the index's doing
    reads, page = await _reads(store, store.list_calls(tracker="acme", limit=10,
                                                       where={"source": "google"}))
    assert _ids(page) == [f"c_acme_{i:03d}" for i in range(299, 289, -1)] and reads < 60
    reads, page = await _reads(store, store.list_calls(tracker="acme", outcome="busy"))
    assert _ids(page) == [] and reads > 300
    # a filter the index does not hold is read the old way, not answered "none"
    page = await store.list_calls(tracker="acme", limit=1, where={"medium": "cpc"})
    assert _ids(page) == ["c_acme_299"]


async def test_filters_across_trackers_in_order_and_after_tags_change(
        store: RedisStore) -> None:
    for i in range(6):  # two trackers' billboard calls, interleaved in time
        tracker = ("acme", "other")[i % 2]
        await store.save_call(call(f"c_{i}", i, tracker=tracker, attribution=BILLBOARD))
    await store.save_call(call("c_x", 10, tracker="other"))  # no channel
    assert _ids(await store.list_calls(where={"channel": "billboard"})) == [
        "c_5", "c_4", "c_3", "c_2", "c_1", "c_0"]
    seen, cursor = [], None
    while True:  # paging walks both trackers' calls, one by one
        page = await store.list_calls(limit=1, cursor=cursor, where={"channel": "billboard"})
        seen += _ids(page)
        cursor = page[1]
        if cursor is None:
            break
    assert seen == ["c_5", "c_4", "c_3", "c_2", "c_1", "c_0"]
    assert _ids(await store.list_calls(tracker="other", where={"channel": "billboard"})) == [
        "c_5", "c_3", "c_1"]
    # tags changed: the call is found under its new tags only
    c = await store.get_call("c_2")
    assert c is not None
    await store.update_call(replace(c, tags=("old", "kept")))
    await store.update_call(replace(c, tags=("new", "kept")))
    assert _ids(await store.list_calls(where={"tag": "old"})) == []
    assert _ids(await store.list_calls(where={"tag": "new"})) == ["c_2"]
    assert _ids(await store.list_calls(tracker="acme", where={"tag": "kept"})) == ["c_2"]
    assert _ids(await store.list_calls(tracker="other", where={"tag": "kept"})) == []
    for rec in (await store.list_calls(limit=100))[0]:  # the index and the predicate agree
        for where in ({"channel": "billboard"}, {"tag": "new"}, {"tag": "old"}):
            assert call_matches(rec, where) == (
                rec.id in _ids(await store.list_calls(limit=100, where=where))), (rec.id, where)


async def test_calls_saved_before_the_index_are_filed_at_open(redis_url: str) -> None:
    s = await _opened(redis_url)
    await _many(s, 50)
    await s.save_call(call("c_bb", 7.5, attribution=BILLBOARD))
    tagged = await s.get_call("c_acme_020")
    assert tagged is not None
    await s.update_call(replace(tagged, tags=("sofa",)))
    # what an older version left: no index at all
    keys = [k async for k in s.r.scan_iter("ctd:ci*")]
    assert keys
    await s.r.delete(*keys)
    await s.close()

    fresh = create_store(redis_url)
    assert isinstance(fresh, RedisStore)
    await fresh.open()
    try:
        # done or not yet (then filters read every CDR), no call is missed
        assert _ids(await fresh.list_calls(tracker="acme", where={"tag": "sofa"})) == [
            "c_acme_020"]
        for _ in range(600):
            if await fresh.r.get("ctd:cibackfill") == b"done":
                break
            await asyncio.sleep(0.05)
        reads, page = await _reads(fresh, fresh.list_calls(tracker="acme", where={"tag": "sofa"}))
        assert _ids(page) == ["c_acme_020"] and reads < 20
        reads, page = await _reads(fresh, fresh.list_calls(where={"channel": "billboard"}))
        assert _ids(page) == ["c_bb"] and reads < 20
    finally:
        await fresh.close()


async def test_the_purge_takes_calls_out_of_the_index(store: RedisStore) -> None:
    for i in range(20):
        rec = call(f"c_{i}", i * 60, attribution=BILLBOARD if i % 2 else None)
        await store.save_call(rec)
        await store.update_call(replace(rec, tags=(f"t{i % 3}",)))
    cutoff = (T0 + timedelta(minutes=10 * 60)).timestamp()
    assert await store.purge_calls(cutoff) == 10
    assert _ids(await store.list_calls(limit=100, where={"channel": "billboard"})) == [
        f"c_{i}" for i in range(19, 9, -2)]
    left = {k.decode(): await store.r.zrange(k, 0, -1)
            async for k in store.r.scan_iter("ctd:ci:*")}
    kept = {f"c_{i}".encode() for i in range(10, 20)}
    assert left and all(set(members) <= kept for members in left.values()), left
    assert await store.r.smembers("ctd:cikeys:acme") == {k.encode() for k in left}
    await store.purge_calls((T0 + timedelta(days=1)).timestamp())
    assert [k async for k in store.r.scan_iter("ctd:ci:*")] == []
    assert not await store.r.exists("ctd:cikeys:acme")


async def test_stats_read_every_cdr_once_for_both_statistics(
        store: RedisStore, redis_url: str) -> None:
    await _many(store, 40)
    await store.save_call(call("c_bb", 3.5, attribution=BILLBOARD))
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    reads_one, calls = await _reads(store, store.call_stats("acme", *window))
    assert reads_one >= 41 and sum(c.calls for c in calls) == 41
    # both statistics, as /v1/stats asks for them: one pass, the reads of one statistic
    reads_both, (both_calls, attributions) = await _reads(
        store, store.window_stats("acme", *window))
    assert reads_both == reads_one and both_calls == calls
    other = await _opened(redis_url)  # another node: passes of its own
    try:
        assert attributions == await other.attribution_stats("acme", *window)
        assert calls == await other.call_stats("acme", *window)
        # asked alone, each statistic makes its own pass (no answer kept between calls)
        reads, again = await _reads(store, store.attribution_stats("acme", *window))
        assert reads >= 41 and again == attributions
        narrow = (T0, T0 + timedelta(minutes=10))
        reads, few = await _reads(store, store.call_stats("acme", *narrow))
        assert reads >= 10 and few == await other.call_stats("acme", *narrow)
    finally:
        await other.close()
