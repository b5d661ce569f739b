"""The holder history, visits and confidence sums, on both stores (real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_store_sqlite import NUMBERS, T0, TRACKER, call, session

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.tracking.model import Attribution


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (f"sqlite://{tmp_path}/calltrackd.db" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    s = create_store(url)
    await s.open()
    await s.sync_pools([TRACKER])
    yield s
    await s.close()


async def test_a_number_remembers_who_held_it_and_until_when(store: Store) -> None:
    pool = TRACKER.pools[0].name
    t = 1_000_000.25
    # two numbers: alice gets the first, bob the second; both lapse; carol then dave
    # take them again (longest idle first), alice's number goes to carol
    a = await store.reserve("acme", pool, "s_alice", t, 360.0)
    await store.renew("s_alice", t + 100.5, 360.0)  # renewals move the end of the hold
    await store.reserve("acme", pool, "s_bob", t + 1, 360.0)
    await store.renew("s_bob", t + 200, 360.0)  # bob's number rests less long
    c = await store.reserve("acme", pool, "s_carol", t + 1000, 360.0)
    assert a is not None and c is not None and c.number == a.number == NUMBERS[0]
    assert await store.release("s_carol", t + 1100.75)
    history = await store.hold_history(NUMBERS[0], t + 2000)
    assert [h.session_id for h in history] == ["s_carol", "s_alice"]
    # starts may be kept to the whole second (Redis), ends are exact
    assert [h.until for h in history] == [t + 1100.75, t + 460.5]
    assert [int(h.started_at) for h in history] == [int(t + 1000), int(t)]


async def test_visits_and_confidence_sums_for_the_stats(store: Store) -> None:
    first = T0.timestamp()
    await store.create_session(session("s_a", first_seen=first, last_seen=first), True)
    await store.touch_session("s_a", first + 50)
    await store.create_session(session("s_b", first_seen=first + 10, last_seen=first + 10),
                               False)
    visits = await store.visits("acme", first - 1, first + 3600)
    assert [(v.first_seen, v.last_seen) for v in visits] == [(first, first + 50),
                                                             (first + 10, first + 10)]
    sure = Attribution("dynamic", session=session("s_a"), confidence=0.9, pool="paid")
    await store.save_call(replace(call("c_1"), attribution=sure))
    await store.save_call(replace(call("c_2"), attribution=replace(sure, confidence=0.5)))
    await store.save_call(call("c_3"))  # no attribution
    rows = {(r.pool, r.kind): r for r in await store.attribution_stats("acme")}
    web = rows[("paid", "dynamic")]
    assert (web.calls, web.scored, round(web.confidence, 6)) == (2, 2, 1.4)
    assert rows[(None, "none")].calls == 1 and rows[(None, "none")].scored == 0
