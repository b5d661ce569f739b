"""GET /v1/calls filters and the Pools page's hours, on both stores (SQLite and Redis on
a real redis-server): a call is found by the channel, source, campaign and tag the
reports show for it and by the carrier it came in by, and a pool's recorded hours come
back as they were counted."""

from __future__ import annotations

from dataclasses import replace

from test_store_contract import store  # noqa: F401  (the fixture of both stores)
from test_store_sqlite import TRACKER, call, session

from calltrackd.store.base import Store
from calltrackd.store.codec import call_matches
from calltrackd.tracking.model import Attribution, CallRecord


def _ids(calls: list[CallRecord]) -> list[str]:
    return [c.id for c in calls]


async def test_calls_are_listed_by_channel_source_campaign_and_tag(store: Store) -> None:  # noqa: F811
    google = Attribution("dynamic", session=session(channel="paid", source="google",
                                                    medium="cpc"))
    yandex = Attribution("dynamic", session=session("s_bob", channel="paid", source="yandex",
                                                    medium="cpc", utm_campaign="autumn"))
    billboard = Attribution("static", channel="billboard")
    await store.save_call(call("c_1", 0, attribution=google))
    await store.save_call(call("c_2", 1, attribution=yandex))
    await store.save_call(call("c_3", 2, attribution=billboard))
    await store.save_call(call("c_4", 3, attribution=billboard, tracker="other"))
    await store.save_call(call("c_5", 4))  # no attribution at all
    tagged = await store.get_call("c_3")
    assert tagged is not None
    await store.update_call(replace(tagged, tags=("lead", "sofa")))

    async def listed(**where: str) -> list[str]:
        return _ids((await store.list_calls(tracker="acme", where=where))[0])

    assert await listed() == ["c_5", "c_3", "c_2", "c_1"]
    assert await listed(channel="paid") == ["c_2", "c_1"]
    assert await listed(channel="billboard") == ["c_3"]
    assert await listed(channel="Paid") == []  # exactly as the reports show it
    assert await listed(source="yandex") == ["c_2"]
    assert await listed(campaign="spring") == ["c_1"]
    assert await listed(channel="paid", campaign="autumn") == ["c_2"]
    assert await listed(tag="lead") == ["c_3"]
    assert await listed(tag="lead", channel="paid") == []
    assert await listed(tag="nobody") == []
    # paging walks the filtered calls only
    page, cursor = await store.list_calls(tracker="acme", limit=1, where={"channel": "paid"})
    assert _ids(page) == ["c_2"] and cursor is not None
    page, cursor = await store.list_calls(tracker="acme", limit=1, cursor=cursor,
                                          where={"channel": "paid"})
    assert _ids(page) == ["c_1"] and cursor is None
    for c in (await store.list_calls(limit=100))[0]:  # the SQL and the predicate agree
        for where in ({"channel": "paid"}, {"tag": "lead"}, {"source": "google"}):
            assert call_matches(c, where) == (c.id in await listed(**where)
                                              and c.tracker == "acme"), (c.id, where)


async def test_calls_are_listed_by_the_carrier_they_came_in_by(store: Store) -> None:  # noqa: F811
    google = Attribution("dynamic", session=session(channel="paid", source="google",
                                                    medium="cpc"))
    await store.save_call(call("c_1", 0, carrier="sbc-a", attribution=google))
    await store.save_call(call("c_2", 1, carrier="sbc-b", attribution=google))
    await store.save_call(call("c_3", 2, carrier="sbc-a"))
    await store.save_call(call("c_4", 3, carrier="sbc-a", tracker="other"))
    await store.save_call(call("c_5", 4))  # a record written before carriers were kept
    tagged = await store.get_call("c_3")
    assert tagged is not None
    await store.update_call(replace(tagged, tags=("lead",)))  # the CRM keeps the carrier

    async def listed(**where: str) -> list[str]:
        return _ids((await store.list_calls(tracker="acme", where=where))[0])

    assert await listed(carrier="sbc-a") == ["c_3", "c_1"]
    assert await listed(carrier="sbc-b") == ["c_2"]
    assert await listed(carrier="SBC-A") == []  # exactly as configured
    assert await listed(carrier="sbc-a", channel="paid") == ["c_1"]
    assert await listed(carrier="sbc-a", tag="lead") == ["c_3"]
    assert await listed(carrier="nosuch") == []
    assert _ids((await store.list_calls(where={"carrier": "sbc-a"}))[0]) == [
        "c_4", "c_3", "c_1"]
    page, cursor = await store.list_calls(tracker="acme", limit=1, where={"carrier": "sbc-a"})
    assert _ids(page) == ["c_3"] and cursor is not None
    page, cursor = await store.list_calls(tracker="acme", limit=1, cursor=cursor,
                                          where={"carrier": "sbc-a"})
    assert _ids(page) == ["c_1"] and cursor is None
    assert [(c.id, c.carrier) for c in (await store.list_calls(tracker="acme"))[0]] == [
        ("c_5", None), ("c_3", "sbc-a"), ("c_2", "sbc-b"), ("c_1", "sbc-a")]
    for c in (await store.list_calls(limit=100))[0]:  # the query and the predicate agree
        where = {"carrier": "sbc-a"}
        assert call_matches(c, where) == (c.id in await listed(**where)
                                          or c.tracker == "other"), c.id


async def test_a_pools_recorded_hours(store: Store) -> None:  # noqa: F811
    await store.sync_pools([TRACKER])
    hour = 500_000
    t = hour * 3600.0
    assert await store.reserve("acme", "paid", "s_a", t + 10, 60.0) is not None
    assert await store.reserve("acme", "paid", "s_b", t + 20, 60.0) is not None
    assert await store.reserve("acme", "paid", "s_c", t + 30, 60.0) is None  # turned away
    assert await store.reserve("acme", "paid", "s_d", t + 7300, 60.0) is not None  # 2 h on
    usage = await store.pool_usage("acme", "paid", hour - 1, hour + 3)
    assert [(b.hour, b.peak, b.shortfall) for b in usage] == [(hour, 2, 1), (hour + 2, 1, 0)]
    assert await store.pool_usage("acme", "paid", hour + 3, hour + 27) == []
    assert await store.pool_usage("acme", "nope", hour, hour + 1) == []
