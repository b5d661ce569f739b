"""The PostgreSQL store on a real server (started here on a loopback port, stopped by its
PID): every store test of tests/unit/store that takes only the `store` fixture runs on it
too, and the daemon's report flow (SIPp calls, spend, CRM write-back) runs on it end to
end. The schema is dropped between tests."""

from __future__ import annotations

import functools
import inspect
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "store"))

import test_hold_history
import test_storable
import test_store_call_filters
import test_store_contract
import test_store_reports
import test_store_reports_zone
import test_store_visits
from test_store_reports import DAY0, canonical, query, synthetic_calls, visit
from test_store_sqlite import TRACKER, call, delivery, rotation_goes_on_after_a_restart, session

from calltrackd.store import create_store
from calltrackd.store.base import Store, StoreError
from calltrackd.store.postgres import PostgresStore
from calltrackd.tracking import reports as rep
from tests.pgserver import PostgresServer

from .test_reports_flow import (  # noqa: F401 - the flow and its fixture, on PostgreSQL
    env,
    test_report_by_campaign_and_term_shows_counts_spend_cpl_and_roi,
)


# the shared store tests: those whose only argument is the store; the modules whose own
# fixture configures the pools get them configured here too
def _store_only(fn: Callable[..., Any]) -> bool:
    """Does the test take the store and nothing else but its parametrized arguments?"""
    given = {n.strip() for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"
             for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    params = list(inspect.signature(fn).parameters)
    return bool(params) and params[0] == "store" and set(params[1:]) <= given


def _with_pools(fn: Callable[[Store], Awaitable[None]]) -> Callable[[Store], Awaitable[None]]:
    @functools.wraps(fn)
    async def test(store: Store) -> None:
        await store.sync_pools([TRACKER])
        await fn(store)

    return test


for _module, _pools in ((test_store_contract, False), (test_store_call_filters, False),
                        (test_store_reports, False),
                        (test_store_reports_zone, False), (test_store_visits, True),
                        (test_hold_history, True), (test_storable, False)):
    for _name, _fn in vars(_module).items():
        if _name.startswith("test_") and inspect.iscoroutinefunction(_fn) and \
                _store_only(_fn):
            globals()[_name] = _with_pools(_fn) if _pools else _fn


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


async def _reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture
async def pg_url(pg_server: PostgresServer) -> str:
    await _reset(pg_server.url)
    return pg_server.url


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    s = create_store(pg_url)
    s.node_id = "node-a"
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def store_url(pg_url: str) -> str:
    """The daemon's `[store] url` in the report flow."""
    return pg_url


def test_postgres_store_satisfies_the_store_interface() -> None:
    store: Store = PostgresStore("postgresql://127.0.0.1/x")  # mypy checks the protocol
    assert isinstance(store, PostgresStore)
    with pytest.raises(ValueError, match=r"store\.url"):
        PostgresStore("mysql://127.0.0.1/x")


async def test_reservations_sessions_and_visit_counters_survive_a_restart(pg_url: str) -> None:
    s = create_store(pg_url)
    await s.open()
    await s.sync_pools([TRACKER])
    v = replace(session("s_a"), first_seen=DAY0.timestamp(), last_seen=DAY0.timestamp())
    await s.create_session(v, False)
    hold = await s.reserve("acme", "paid", v.id, v.first_seen, 360.0)
    assert hold is not None
    await s.close()
    s = create_store(pg_url)
    await s.open()
    await s.sync_pools([TRACKER])
    current, _ = await s.holders(hold.number, v.first_seen + 10)
    assert current is not None and current.session_id == v.id
    assert await s.get_session(v.id) == v
    for k in range(3):  # every renewal says "dynamic": the visit counts once
        await s.touch_session(v.id, v.first_seen + 60 * k, dynamic=True)
    (total,) = await s.report_visits(query({"group_by": ()}))
    assert (total.visitors, total.dynamic) == (1, 1)
    await s.close()


async def test_rotation_counts_survive_a_restart(pg_url: str) -> None:
    await rotation_goes_on_after_a_restart(pg_url)


async def test_one_node_per_database_and_due_deliveries_are_leased(pg_url: str) -> None:
    a, b = create_store(pg_url), create_store(pg_url)
    a.node_id, b.node_id = "n1", "n2"
    await a.open()
    try:
        with pytest.raises(StoreError, match="another calltrackd node"):
            await b.open()  # its reservations would be a's numbers all over again
        await a.save_call(call("c_1"), [delivery(f"d_{i}", at=100.0 + i) for i in range(20)])
        first = {d.id for d in await a.due_deliveries(500.0, 15)}
        second = {d.id for d in await a.due_deliveries(500.0, 15)}  # the rest only
        assert len(first) == 15 and len(second) == 5 and not first & second
        assert len(await a.due_deliveries(500.0 + 61, 50)) == 20  # leases end: retried
        await a.heartbeat(10.0)
        assert await a.last_heartbeat() == 10.0
        assert [c.id for c in await a.open_calls(1e12)] == ["c_1"]  # no outcome yet
    finally:
        await a.close()
    await b.open()  # a closed: the lock is free, and b's node has nothing open
    try:
        assert await b.last_heartbeat() is None and await b.open_calls(1e12) == []
        assert len(await b.due_deliveries(1000.0, 50)) == 20
    finally:
        await b.close()


async def test_a_server_away_is_a_store_error(pg_server: PostgresServer) -> None:
    s = PostgresStore(f"postgresql://postgres@127.0.0.1:{pg_server.port + 1}/postgres")
    with pytest.raises(StoreError):
        await s.open()


async def test_zoned_report_sql_matches_the_reference_with_visits(store: Store) -> None:
    records = synthetic_calls(300)
    for r in records:
        await store.save_call(r)
    rnd = random.Random(9)
    for i in range(100):
        await store.create_session(visit(i, rnd, DAY0), dynamic=i % 2 == 0)
    q = query({"group_by": ("weekday", "hour"), "zone": "Asia/Kolkata",
               "filters": {"weekday": frozenset({1, 2, 7})}})
    facts = [rep.call_fact(r) for r in records]
    assert canonical(await store.report_calls(q)) == canonical(rep.aggregate_calls(facts, q))
