"""Reports, spend, CRM updates and retention: the same answers from the embedded SQLite
store and from Redis (a real redis-server, conftest.py), checked against the reference
aggregation of tracking/reports.py."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import test_store_contract

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.tracking import reports as rep
from calltrackd.tracking.model import (
    Attribution,
    AttributionKind,
    CallRecord,
    Outcome,
    VisitorSession,
    WebhookEndpoint,
)
from calltrackd.webhooks.payload import build_deliveries

store = test_store_contract.store  # the fixture: each test runs on SQLite and on Redis
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
POOLS = {"+74990000001": "paid", "+74990000002": "paid", "+74990000003": "organic"}
CAMPAIGNS = ("spring", "autumn", None)
TERMS = ("buy sofa", "sofa price", None)
KINDS: tuple[AttributionKind, ...] = ("dynamic", "dynamic", "static", "default", "expired")
OUTCOMES: tuple[Outcome | None, ...] = ("answered", "answered", "busy", "no_answer", None)


def visit(i: int, rnd: random.Random, at: datetime) -> VisitorSession:
    source = rnd.choice(("google", "Yandex", None))
    return VisitorSession(
        f"s_{i}", rnd.choice(("acme", "beta")), client_id=f"c{i}",
        utm_source=source, utm_medium="cpc" if source else None,
        utm_campaign=rnd.choice(CAMPAIGNS), utm_term=rnd.choice(TERMS),
        landing_page=rnd.choice(("https://acme.example/sofas?utm_source=x",
                                 "https://acme.example/", None)),
        referrer=rnd.choice(("https://www.google.com/search?q=1", None)),
        first_seen=at.timestamp(), last_seen=at.timestamp())


def synthetic_calls(n: int, seed: int = 7) -> list[CallRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        at = DAY0 + timedelta(minutes=rnd.randrange(0, 5 * 24 * 60), seconds=rnd.random())
        kind = rnd.choice(KINDS)
        att = (Attribution("static", channel=rnd.choice(("billboard", "radio")))
               if kind == "static" else Attribution(kind, session=visit(i, rnd, at))
               if kind in ("dynamic", "expired") else Attribution(kind))
        outcome = rnd.choice(OUTCOMES)
        ring = round(rnd.uniform(0.5, 20), 3)
        talk = round(rnd.uniform(1, 300), 3) if outcome == "answered" else None
        out.append(CallRecord(
            f"c_{i:04d}", rnd.choice(("acme", "beta")), rnd.choice((*POOLS, "+7499")),
            rnd.choice((*(f"+7916000{k:04d}" for k in range(40)), "anonymous")),
            at, outcome=outcome, ring_seconds=ring if outcome else None, talk_seconds=talk,
            first_time_caller=rnd.choice((True, False, None)),
            qualified=(talk or 0) > 30 if outcome else None, attribution=att))
    return out


async def each(writes: Iterable[Awaitable[None]], at_once: int = 50) -> None:
    """Awaits `writes` (of different records: no order among them) `at_once` at a time, as
    a busy node's calls arrive, so that they share the store's write batches. Awaited one
    by one, every call record waits out a batch window of its own (20 ms on SQLite, 10 ms
    on PostgreSQL): 900 writes took 15 s on a loaded machine. At most 50 wait at a time,
    well within the Redis store's 64 connections."""
    batch: list[Awaitable[None]] = []
    for write in writes:
        batch.append(write)
        if len(batch) == at_once:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


def crm(record: CallRecord, rnd: random.Random) -> CallRecord:
    tags = rnd.choice(((), ("hot",), ("hot", "vip"), ("spam",)))
    return replace(record, tags=tags, lead_status=rnd.choice(("won", None)),
                   value=rnd.choice((None, 1500.0, 99.99)))


QUERIES: list[dict[str, Any]] = [
    {"group_by": ()},
    {"group_by": ("campaign", "term")},
    {"group_by": ("source", "medium"), "tracker": "acme"},
    {"group_by": ("tag",)},
    {"group_by": ("pool", "first_time")},
    {"group_by": ("day", "hour", "weekday")},
    {"group_by": ("static_channel", "channel")},
    {"group_by": ("landing_page", "referrer_domain", "content")},
    {"group_by": ("campaign",), "filters": {"tag": frozenset({"vip", "spam"})}},
    {"group_by": ("tag", "campaign"), "filters": {"source": frozenset({"google"})}},
    {"group_by": ("tag", "source"), "filters": {"tag": frozenset({"vip"})}},
    {"group_by": ("term",), "filters": {"pool": frozenset({"paid"}),
                                        "first_time": frozenset({True})}},
    {"group_by": ("weekday",), "filters": {"hour": frozenset({9, 10, 11, 12})},
     "since": (DAY0 + timedelta(days=1)).timestamp(),
     "until": (DAY0 + timedelta(days=3, hours=5)).timestamp()},
]


def query(spec: dict[str, Any]) -> rep.ReportQuery:
    return rep.ReportQuery(pools=POOLS, **spec)


def canonical(groups: list[rep.CallGroup] | list[rep.VisitGroup]) -> list[tuple[Any, ...]]:
    return sorted((tuple(vars_of(g))) for g in groups)


def vars_of(g: Any) -> tuple[Any, ...]:
    return tuple(repr(getattr(g, f)) for f in g.__slots__)


async def test_reports_count_the_same_on_every_store_as_the_reference(store: Store) -> None:
    records = synthetic_calls(600)
    rnd = random.Random(3)
    await each(store.save_call(r) for r in records)
    updated = {r.id: crm(r, rnd) for r in records[::3]}
    await each(store.update_call(u) for u in updated.values())
    # the call's later steps (a new version of its CDR) keep what the CRM wrote
    await each(store.save_call(replace(r, hangup_by="caller")) for r in records[::6])
    facts = [rep.call_fact(updated.get(r.id, r)) for r in records]
    for spec in QUERIES:
        q = query(spec)
        assert canonical(await store.report_calls(q)) == canonical(
            rep.aggregate_calls(facts, q)), spec
    got = await store.get_call(records[0].id)
    assert got is not None and got.tags == updated[records[0].id].tags
    assert got.value == updated[records[0].id].value
    listed = {c.id: c for c in (await store.list_calls(limit=1000))[0]}
    assert listed[records[3].id].lead_status == updated[records[3].id].lead_status


async def test_visitors_are_counted_per_visit_source_and_hour(store: Store) -> None:
    rnd = random.Random(5)
    sessions = [visit(i, rnd, DAY0 + timedelta(minutes=rnd.randrange(0, 3 * 1440)))
                for i in range(300)]
    dynamic = {s.id for s in sessions if rnd.random() < 0.5}
    await each(store.create_session(s, s.id in dynamic) for s in sessions)

    async def given_a_number(s: VisitorSession) -> None:
        await store.touch_session(s.id, s.first_seen + 60, dynamic=True)
        await store.touch_session(s.id, s.first_seen + 90, dynamic=True)

    await each(given_a_number(s) for s in sessions[::4])  # given a number later: counted once
    dynamic.update(s.id for s in sessions[::4])
    cells = [(rep.visit_cell(s), 1, int(s.id in dynamic)) for s in sessions]
    for spec in ({"group_by": ("campaign", "term")}, {"group_by": ("source", "day", "hour")},
                 {"group_by": ("landing_page",), "tracker": "beta"},
                 {"group_by": ("referrer_domain", "weekday"),
                  "filters": {"medium": frozenset({"cpc"})},
                  "since": (DAY0 + timedelta(hours=30)).timestamp()}):
        q = query(spec)
        expected = rep.aggregate_visits(
            [c for c, s in zip(cells, sessions, strict=True)
             if q.tracker in (None, s.tracker)], q)
        assert canonical(await store.report_visits(q)) == canonical(expected), spec
    total = await store.report_visits(query({"group_by": ()}))
    assert (total[0].visitors, total[0].dynamic) == (300, len(dynamic))


async def test_spend_is_replaced_by_key_and_read_back(store: Store) -> None:
    row = rep.SpendRow("acme", "2026-11-30", "google", "cpc", "spring", 120050, "RUB")
    await store.put_spend([row, replace(row, day="2026-12-01", amount_cents=100)])
    await store.put_spend([replace(row, amount_cents=99900)])  # the same key: replaced
    got = await store.list_spend("acme")
    assert [(r.day, r.amount_cents) for r in got] == [("2026-11-30", 99900),
                                                      ("2026-12-01", 100)]
    assert [r.day for r in await store.list_spend(since_day="2026-12-01")] == ["2026-12-01"]
    assert await store.list_spend("beta") == []


async def test_call_update_writes_its_webhook_to_the_outbox(store: Store) -> None:
    record = synthetic_calls(1)[0]
    await store.save_call(record)
    endpoint = WebhookEndpoint("https://crm.example/h", "secret",
                               ("call.ended", "call.updated"))
    updated = replace(record, tags=("won",), value=10.0)
    deliveries = build_deliveries("call.updated", updated, [endpoint], time.time())
    await store.update_call(updated, deliveries)
    due = await store.due_deliveries(time.time() + 1, 10)
    assert [d.event for d in due] == ["call.updated"]
    assert b'"tags":["won"]' in due[0].body


async def test_retention_deletes_old_records_with_their_facts(store: Store) -> None:
    records = synthetic_calls(200)
    await each(store.save_call(r) for r in records)
    await store.update_call(crm(records[0], random.Random(1)))
    cutoff = DAY0 + timedelta(days=2)
    removed = await store.purge_calls(cutoff.timestamp())
    old = [r for r in records if r.started_at < cutoff]
    assert removed == len(old) and old
    assert await store.get_call(old[0].id) is None
    kept = [r for r in records if r.started_at >= cutoff]
    assert len((await store.list_calls(limit=1000))[0]) == len(kept)
    q = query({"group_by": ()})
    assert canonical(await store.report_calls(q)) == canonical(
        rep.aggregate_calls([rep.call_fact(r) for r in kept], q))


async def test_calls_recorded_before_reports_existed_are_backfilled(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    records = synthetic_calls(50)
    for kind in ("sqlite", "redis"):
        url = (f"sqlite://{tmp_path}/old.db" if kind == "sqlite"
               else request.getfixturevalue("redis_url"))
        s = create_store(url)
        await s.open()
        await each(s.save_call(r) for r in records)
        await s.close()
        # what an older version left: CDRs without report facts
        if kind == "sqlite":
            with sqlite3.connect(f"{tmp_path}/old.db") as conn:
                conn.execute("DELETE FROM report_calls")
                conn.execute("DELETE FROM report_meta")
        else:
            client = aioredis.Redis.from_url(url)
            keys = [k async for k in client.scan_iter("ctd:r*")]
            await client.delete(*keys)
            await client.aclose()
        s = create_store(url)
        await s.open()
        q = query({"group_by": ("campaign",)})
        expected = canonical(rep.aggregate_calls([rep.call_fact(r) for r in records], q))
        for _ in range(600):  # the backfill runs in the background: up to 30 s
            if canonical(await s.report_calls(q)) == expected:
                break
            await asyncio.sleep(0.05)
        assert canonical(await s.report_calls(q)) == expected, kind
        await s.close()


async def test_a_visit_given_a_number_after_a_restart_counts_once(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for kind in ("sqlite", "redis"):
        url = (f"sqlite://{tmp_path}/visits.db" if kind == "sqlite"
               else request.getfixturevalue("redis_url"))
        s = create_store(url)
        await s.open()
        v = visit(1, random.Random(1), DAY0)
        await s.create_session(v, False)
        await s.close()
        s = create_store(url)
        await s.open()
        for k in range(3):  # every renewal says "dynamic"
            await s.touch_session(v.id, v.first_seen + 60 * k, dynamic=True)
        (total,) = await s.report_visits(query({"group_by": ()}))
        assert (total.visitors, total.dynamic) == (1, 1), kind
        await s.close()
