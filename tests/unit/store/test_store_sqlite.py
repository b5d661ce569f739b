import asyncio
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from calltrackd.store import create_store
from calltrackd.store.base import Store, StoreError
from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.model import (
    Attribution,
    CallRecord,
    ForwardTarget,
    Pool,
    Tracker,
    VisitorSession,
    WebhookDelivery,
)

T0 = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
NUMBERS = ("+74990000001", "+74990000002")
TRACKER = Tracker(
    id="acme",
    public_key="pk_acme",
    default_number="+74990000000",
    forward=(ForwardTarget("sip:pbx.acme.example"),),
    pools=(Pool("paid", ("*",), NUMBERS),),
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore.from_url(f"sqlite://{tmp_path}/db/calltrackd.db")
    await s.open()
    yield s
    await s.close()


def session(sid: str = "s_alice", **kw: object) -> VisitorSession:
    fields: dict[str, object] = {
        "client_id": "GA1.2.111.222", "ym_uid": "1690000000123", "utm_source": "google",
        "utm_medium": "cpc", "utm_campaign": "spring", "utm_term": "buy sofa",
        "referrer": "https://www.google.com/", "landing_page": "https://acme.example/sofas",
        "custom": {"product_id": "42", "tags": ["a", "b"], "n": 1.5},
        "first_seen": 1000.25, "last_seen": 1010.5,
    }
    fields.update(kw)
    return VisitorSession(sid, "acme", **fields)  # type: ignore[arg-type]


def call(cid: str, minutes: float = 0, **kw: object) -> CallRecord:
    fields: dict[str, object] = {
        "tracker": "acme", "did": NUMBERS[0], "caller": "+79161234567",
        "started_at": T0 + timedelta(minutes=minutes),
    }
    fields.update(kw)
    return CallRecord(cid, **fields)  # type: ignore[arg-type]


def delivery(did: str, event: str = "call.ended", at: float = 100.0) -> WebhookDelivery:
    return WebhookDelivery(
        id=did, event_id="evt_" + did, event=event, tracker="acme",
        url="https://crm.example/hook", body=b'{"event":"' + event.encode() + b'"}',
        created_at=at, next_attempt_at=at,
    )


def test_sqlite_store_satisfies_the_store_interface() -> None:
    store: Store = create_store("sqlite:///tmp/x.db")
    assert isinstance(store, SqliteStore) and store.path == "/tmp/x.db"
    assert SqliteStore.from_url("sqlite://var/x.db").path == "var/x.db"
    assert SqliteStore.from_url("sqlite:///:memory:").path == ":memory:"
    with pytest.raises(ValueError, match=r"store\.url"):
        create_store("mysql://x")  # postgres:// is a store of its own now


async def test_database_file_and_parent_dirs_are_created_in_wal_mode(
    store: SqliteStore, tmp_path: Path
) -> None:
    db = tmp_path / "db" / "calltrackd.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    await store.ping()


# --- CDRs --------------------------------------------------------------------------


async def test_call_record_round_trips_exactly(store: SqliteStore) -> None:
    record = call(
        "c_1", answered_at=T0 + timedelta(seconds=4.2), ended_at=T0 + timedelta(seconds=67.2),
        ring_seconds=4.2, talk_seconds=63.0, outcome="answered", sip_code=200,
        hangup_by="caller", target="sip:pbx.acme.example:5060;transport=udp",
        first_time_caller=True, qualified=True,
        attribution=Attribution("dynamic", session=session()),
    )
    await store.save_call(record)
    assert await store.get_call("c_1") == record
    assert (await store.get_call("c_1")).to_json() == record.to_json()  # type: ignore[union-attr]


async def test_call_record_in_progress_and_other_timezones_round_trip(store: SqliteStore) -> None:
    msk = timezone(timedelta(hours=3))
    record = call("c_2", started_at=T0.astimezone(msk),
                  attribution=Attribution("none", error="store: TimeoutError"))
    await store.save_call(record)
    assert await store.get_call("c_2") == record
    assert await store.get_call("c_missing") is None


async def test_saving_a_call_again_updates_it(store: SqliteStore) -> None:
    await store.save_call(call("c_1"))
    ended = call("c_1", outcome="busy", sip_code=486)
    await store.save_call(ended)
    assert await store.get_call("c_1") == ended
    calls, _ = await store.list_calls()
    assert len(calls) == 1


async def test_calls_list_newest_first_with_filters(store: SqliteStore) -> None:
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


async def test_calls_page_through_with_a_cursor_without_gaps_or_repeats(
    store: SqliteStore,
) -> None:
    # 25 calls, several sharing a start time: the cursor must break ties by id
    for i in range(25):
        await store.save_call(call(f"c_{i:02d}", i // 3))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await store.list_calls(tracker="acme", limit=7, cursor=cursor)
        seen += [c.id for c in page]
        pages += 1
        if cursor is None:
            break
    assert pages == 4
    assert len(seen) == 25 == len(set(seen))
    starts = [c.started_at for c in (await store.list_calls(limit=100))[0]]
    assert starts == sorted(starts, reverse=True)


async def test_malformed_cursor_is_a_value_error(store: SqliteStore) -> None:
    for bad in ("nonsense", "e30", "W10"):
        with pytest.raises(ValueError):
            await store.list_calls(cursor=bad)


# --- the outbox ------------------------------------------------------------------------


async def test_cdr_and_its_deliveries_commit_together(store: SqliteStore) -> None:
    await store.save_call(call("c_1"), [delivery("d_1"), delivery("d_2")])
    assert await store.pending_count() == 2
    # a delivery row the database refuses rolls the CDR change back with it
    bad = WebhookDelivery("d_3", "evt", "call.ended", "acme", "u", None, 1.0)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        await store.save_call(call("c_1", outcome="busy"), [bad])
    assert (await store.get_call("c_1")).outcome is None  # type: ignore[union-attr]
    assert await store.pending_count() == 2


async def test_a_refused_record_fails_alone_in_a_batch(store: SqliteStore) -> None:
    bad = WebhookDelivery("d_x", "evt", "call.ended", "acme", "u", None, 1.0)  # type: ignore[arg-type]
    results = await asyncio.gather(
        store.save_call(call("c_1"), [delivery("d_1")]),
        store.save_call(call("c_2"), [bad]),
        store.save_call(call("c_3"), [delivery("d_3")]),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert {c.id for c in (await store.list_calls())[0]} == {"c_1", "c_3"}


async def test_concurrent_saves_each_commit(store: SqliteStore) -> None:
    saves = (store.save_call(call(f"c_{i}"), [delivery(f"d_{i}")]) for i in range(200))
    await asyncio.gather(*saves)
    assert len((await store.list_calls(limit=1000))[0]) == 200
    assert await store.pending_count() == 200


async def test_outbox_lifecycle_due_retry_fail_requeue_deliver(store: SqliteStore) -> None:
    await store.save_call(call("c_1"), [delivery("d_1", at=100.0), delivery("d_2", at=101.0)])
    assert [d.id for d in await store.due_deliveries(99.0, 10)] == []
    assert [d.id for d in await store.due_deliveries(101.0, 10)] == ["d_1", "d_2"]
    assert [d.id for d in await store.due_deliveries(101.0, 1)] == ["d_1"]

    await store.reschedule("d_1", 1, 160.0, "HTTP 503")
    due = await store.due_deliveries(150.0, 10)
    assert [d.id for d in due] == ["d_2"]
    [d1] = [d for d in await store.list_deliveries("pending", 10) if d.id == "d_1"]
    assert (d1.attempts, d1.next_attempt_at, d1.last_error) == (1, 160.0, "HTTP 503")

    await store.mark_failed("d_1", 12, "gave up after 24h")
    [failed] = await store.list_deliveries("failed", 10)
    assert (failed.id, failed.status, failed.attempts) == ("d_1", "failed", 12)
    assert await store.pending_count() == 1

    assert await store.requeue("d_1", 500.0)
    assert {d.id for d in await store.due_deliveries(500.0, 10)} == {"d_1", "d_2"}
    await store.mark_delivered("d_1", 501.0)
    await store.mark_delivered("d_2", 501.0)
    assert await store.pending_count() == 0
    assert not await store.requeue("d_1", 600.0)  # acknowledged: never resent
    assert not await store.requeue("d_unknown", 600.0)
    delivered = await store.list_deliveries("delivered", 10)
    assert {d.id for d in delivered} == {"d_1", "d_2"}
    assert [d.body for d in delivered] == [b'{"event":"call.ended"}'] * 2


async def test_saving_a_cdr_again_does_not_reset_its_deliveries(store: SqliteStore) -> None:
    d = delivery("d_1")
    await store.save_call(call("c_1"), [d])
    await store.mark_delivered("d_1", 200.0)
    await store.save_call(call("c_1", outcome="answered"), [d])  # a retried write
    assert await store.pending_count() == 0


async def test_outbox_and_cdrs_survive_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/x.db"
    first = SqliteStore.from_url(url)
    await first.open()
    await first.save_call(call("c_1"), [delivery("d_1")])
    await first.close()
    second = SqliteStore.from_url(url)
    await second.open()
    try:
        assert await second.get_call("c_1") == call("c_1")
        assert [d.id for d in await second.due_deliveries(1e9, 10)] == ["d_1"]
    finally:
        await second.close()


# --- sessions, reservations, callers ----------------------------------------------------


async def test_sessions_are_found_and_touched(store: SqliteStore) -> None:
    await store.create_session(session(), dynamic=True)
    assert await store.get_session("s_alice") == session()
    await store.touch_session("s_alice", 2000.0)
    got = await store.get_session("s_alice")
    assert got is not None and got.last_seen == 2000.0
    assert await store.get_session("s_nobody") is None


async def test_reservations_and_sessions_survive_close_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/x.db"
    first = SqliteStore.from_url(url)
    await first.open()
    await first.sync_pools([TRACKER])
    a = await first.reserve("acme", "paid", "s_alice", 1000.0, 360.0)
    b = await first.reserve("acme", "paid", "s_bob", 1000.0, 360.0)
    await first.release("s_bob", 1100.0)
    await first.create_session(session(), dynamic=True)
    await first.touch_session("s_alice", 1050.0)
    await first.close()

    second = SqliteStore.from_url(url)
    await second.open()
    try:
        await second.sync_pools([TRACKER])
        assert a is not None and b is not None
        renewed = await second.renew("s_alice", 1200.0, 360.0)
        assert renewed is not None and renewed.number == a.number
        assert await second.reserve("acme", "paid", "s_carol", 1200.0, 360.0) is not None
        assert await second.reserve("acme", "paid", "s_dave", 1200.0, 360.0) is None
        current, last = await second.holders(b.number, 1200.0)
        assert current is not None and current.session_id == "s_carol"
        assert last is not None and (last.session_id, last.until) == ("s_bob", 1100.0)
        got = await second.get_session("s_alice")
        assert got is not None and got.last_seen == 1050.0
        [stats] = await second.pool_stats(1200.0)
        assert (stats.size, stats.reserved, stats.peak_all_time, stats.shortfall) == (2, 2, 2, 1)
    finally:
        await second.close()


async def test_numbers_dropped_from_config_lose_their_reservations(store: SqliteStore) -> None:
    await store.sync_pools([TRACKER])
    await store.reserve("acme", "paid", "s_alice", 0.0, 360.0)
    smaller = replace(TRACKER, pools=(Pool("paid", ("*",), NUMBERS[1:]),))
    await store.sync_pools([smaller])
    assert await store.renew("s_alice", 10.0, 360.0) is None
    [stats] = await store.pool_stats(10.0)
    assert stats.size == 1


async def test_callers_are_remembered_from_saved_calls(store: SqliteStore) -> None:
    assert not await store.caller_seen("acme", "+79161234567")
    await store.save_call(call("c_1"))
    assert await store.caller_seen("acme", "+79161234567")
    assert not await store.caller_seen("other", "+79161234567")
    await store.save_call(call("c_2", caller="anonymous"))
    assert not await store.caller_seen("acme", "anonymous")
    await store.record_caller("other", "+79160000000", 5.0)
    assert await store.caller_seen("other", "+79160000000")


# --- stats ------------------------------------------------------------------------------


async def test_stats_count_calls_per_source_and_visitors_for_coverage(store: SqliteStore) -> None:
    alice = Attribution("dynamic", session=session(utm_source="Google"))
    await store.save_call(call("c_1", outcome="answered", qualified=True, first_time_caller=True,
                               attribution=alice))
    await store.save_call(call("c_2", outcome="busy", qualified=False, first_time_caller=False,
                               attribution=alice))
    await store.save_call(call("c_3", attribution=alice))  # in progress: neither
    await store.save_call(call("c_4", outcome="no_answer", attribution=Attribution("default")))
    rows = {(r.kind, r.utm_source): r for r in await store.call_stats(tracker="acme")}
    g = rows[("dynamic", "google")]
    assert (g.calls, g.answered, g.missed, g.qualified, g.first_time) == (3, 1, 1, 1, 1)
    assert rows[("default", None)].missed == 1

    await store.create_session(session("s_1", first_seen=10.0), dynamic=True)
    await store.create_session(session("s_2", first_seen=20.0), dynamic=False)
    await store.create_session(session("s_3", first_seen=30.0, utm_source=None), dynamic=False)
    await store.close()  # flushes what is written behind
    await store.open()
    v = {r.utm_source: r for r in await store.visitor_stats("acme")}
    assert (v["google"].visitors, v["google"].dynamic) == (2, 1)
    assert (v[None].visitors, v[None].dynamic) == (1, 0)
    since = datetime.fromtimestamp(15.0, UTC)
    assert sum(r.visitors for r in await store.visitor_stats("acme", since=since)) == 2


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = SqliteStore.from_url(f"sqlite://{tmp_path}/x.db")
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.save_call(call("c_1"))
    with pytest.raises(StoreError):
        await s.ping()


async def test_saved_call_survives_the_process_being_killed(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    script = f"""
import asyncio, os, signal
from datetime import datetime, timezone
from calltrackd.store.sqlite import SqliteStore
from calltrackd.tracking.model import CallRecord, WebhookDelivery

async def main():
    s = SqliteStore.from_url("sqlite://{db}")
    await s.open()
    rec = CallRecord("c_kill", "acme", "+74990000001", "+79161234567",
                     datetime(2026, 11, 22, tzinfo=timezone.utc), outcome="answered")
    d = WebhookDelivery("d_kill", "evt_kill", "call.ended", "acme", "https://x", b"{{}}", 1.0)
    await s.save_call(rec, [d])
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    assert await proc.wait() == -signal.SIGKILL
    store = SqliteStore.from_url(f"sqlite://{db}")
    await store.open()
    try:
        got = await store.get_call("c_kill")
        assert got is not None and got.outcome == "answered"
        assert await store.pending_count() == 1
    finally:
        await store.close()


async def rotation_goes_on_after_a_restart(url: str) -> None:
    """Hunt round_robin's counts are kept: a restarted node goes on where it was (also
    the PostgreSQL store's test)."""
    for expected in ([1, 2], [3]):
        s = create_store(url)
        await s.open()
        assert [await s.rotate("acme:aa") for _ in expected] == expected
        await s.close()


async def test_rotation_counts_survive_a_restart(tmp_path: Path) -> None:
    await rotation_goes_on_after_a_restart(f"sqlite://{tmp_path}/calltrackd.db")
