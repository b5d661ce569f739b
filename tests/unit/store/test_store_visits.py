"""The stores' visit methods (custom updates, returning visitors, a given number), the
same on the embedded SQLite store and on Redis, and across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_store_sqlite import NUMBERS, TRACKER, session

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.store.codec import decode_session, encode_session
from calltrackd.tracking.model import LastVisit


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = (f"sqlite://{tmp_path}/calltrackd.db" if request.param == "sqlite"
           else request.getfixturevalue("redis_url"))
    s = create_store(url)
    await s.open()
    await s.sync_pools([TRACKER])
    yield s
    await s.close()


async def reopen(store: Store) -> Store:
    await store.close()
    await store.open()
    await store.sync_pools([TRACKER])
    return store


async def test_custom_updates_replace_the_sessions_data(store: Store) -> None:
    await store.create_session(session(custom={"product_id": "1"}), dynamic=True)
    await store.touch_session("s_alice", 2000.0)
    await store.update_session(replace(session(), custom={"product_id": "2"}))
    got = await store.get_session("s_alice")
    assert got is not None and got.custom == {"product_id": "2"}
    assert got.last_seen == 2000.0  # an update never moves last_seen back
    again = await (await reopen(store)).get_session("s_alice")
    assert again is not None and again.custom == {"product_id": "2"}


async def test_the_latest_visit_of_any_key_is_found(store: Store) -> None:
    assert await store.last_visit("acme", ["v:abc"]) is None
    await store.note_visit("acme", ["v:abc", "ga:1.2"], LastVisit("s_1", NUMBERS[0], 100.0),
                           86400)
    await store.note_visit("acme", ["ym:9"], LastVisit("s_2", None, 200.0), 86400)
    assert await store.last_visit("acme", ["ga:1.2"]) == LastVisit("s_1", NUMBERS[0], 100.0)
    assert await store.last_visit("acme", ["v:abc", "ym:9"]) == LastVisit("s_2", None, 200.0)
    assert await store.last_visit("other", ["v:abc"]) is None  # per tracker
    store = await reopen(store)
    assert await store.last_visit("acme", ["v:abc"]) == LastVisit("s_1", NUMBERS[0], 100.0)


async def test_a_given_number_is_reserved_when_free_or_handed_over(store: Store) -> None:
    first = await store.reserve("acme", "paid", "s_1", 1000.0, 60.0)
    assert first is not None and first.number == NUMBERS[0]
    # held by another visitor: not given
    assert await store.reserve_number("acme", "paid", NUMBERS[0], "s_2", 1010.0, 60.0) is None
    # the same visitor's earlier session hands it over
    hold = await store.reserve_number("acme", "paid", NUMBERS[0], "s_2", 1010.0, 60.0,
                                      previous="s_1")
    assert hold is not None and (hold.number, hold.session_id) == (NUMBERS[0], "s_2")
    assert hold.tracker == "acme" and hold.pool == "paid" and hold.until == 1070.0
    current, last = await store.holders(NUMBERS[0], 1011.0)
    assert current is not None and current.session_id == "s_2"
    assert last is not None and last.session_id == "s_1"
    assert await store.renew("s_1", 1012.0, 60.0) is None
    # lapsed: free again for anyone asking for it by number
    late = await store.reserve_number("acme", "paid", NUMBERS[0], "s_3", 2000.0, 60.0)
    assert late is not None and late.session_id == "s_3"
    assert await store.reserve_number("acme", "paid", "+79990000000", "s_4", 2000.0,
                                      60.0) is None


def test_sessions_stored_before_classification_read_back_with_none() -> None:
    old = ('{"id": "s_old", "tracker": "acme", "client_id": null, "ym_uid": null,'
           ' "utm_source": "google", "utm_medium": "cpc", "utm_campaign": null,'
           ' "utm_term": null, "utm_content": null, "referrer": null, "landing_page": null,'
           ' "custom": {}, "first_seen": 1.0, "last_seen": 2.0}')
    s = decode_session(old)
    assert (s.source, s.medium, s.channel, s.visitor_id, s.ga_session_id) == (None,) * 5
    newer = encode_session(replace(s, source="google")).replace('"id"', '"future": 1, "id"')
    assert decode_session(newer).source == "google"  # a key this build lacks is left out
