"""GET /v1/reports's store queries over 90 days of 1,000,000 calls, on every store.

    .venv/bin/python tests/bench/bench_reports.py [--calls 1000000] [--sessions 300000]
                                                 [--stores sqlite,redis,postgres] [--repeat 3]

Loads the same synthetic calls (a daily curve over 90 days; 12 sources, 40 campaigns,
400 terms, 60 landing pages, 200,000 callers; a tenth of the calls tagged and valued
through `update_call`) and visitor sessions into each store through the store interface
(`save_call`, `update_call`, `create_session`), as the daemon writes them; Redis is a
redis-server started here on a loopback port in a temporary directory, PostgreSQL a
server started here the same way (tests/pgserver.py; fsync on, as in production, and
ANALYZE after the load, as autovacuum would run). Then times the report queries
(report_calls + report_visits + list_spend + build_rows, what the handler runs) and
checks that every store gives the same rows. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calltrackd.store import create_store
from calltrackd.store.base import Store, StoreError
from calltrackd.tracking import reports as rep
from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession
from tests.pgserver import PostgresServer

DAYS = 90
END = datetime(2026, 12, 1, tzinfo=UTC)
START = END - timedelta(days=DAYS)
SOURCES = [("google", "cpc"), ("yandex", "cpc"), ("google", "organic"), ("yandex", "organic"),
           ("vk.com", "social"), ("facebook", "social"), ("mail", "email"), ("bing", "cpc"),
           ("forum.example", "referral"), ("dzen", "social"), ("(direct)", "(none)"),
           ("partner", "affiliate")]
POOLS = {f"+749900{i:05d}": ("paid", "organic", "social")[i % 3] for i in range(300)}
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("campaign,term", {"group_by": ("campaign", "term")}),
    ("source,medium", {"group_by": ("source", "medium")}),
    ("day", {"group_by": ("day",)}),
    ("hour,weekday", {"group_by": ("hour", "weekday")}),
    ("tag", {"group_by": ("tag",)}),
    ("pool,first_time", {"group_by": ("pool", "first_time")}),
    ("landing_page filtered source=google", {"group_by": ("landing_page",),
                                             "filters": {"source": frozenset({"google"})}}),
    ("day,hour in Europe/Berlin (DST change)", {"group_by": ("day", "hour"),
                                                "zone": "Europe/Berlin"}),
]


def hour_curve(rnd: random.Random) -> float:
    """Seconds into a day, more in the working hours."""
    while True:
        s = rnd.uniform(0, 86400)
        if rnd.random() < 0.2 + 0.8 * max(0.0, 1 - abs(s / 3600 - 13) / 8):
            return s


def session(i: int, rnd: random.Random, at: float) -> VisitorSession:
    source, medium = rnd.choice(SOURCES)
    return VisitorSession(
        f"s_{i}", "bench", client_id=f"GA1.2.{i}", utm_source=source, utm_medium=medium,
        utm_campaign=f"campaign-{rnd.randrange(40)}" if medium == "cpc" else None,
        utm_term=f"term {rnd.randrange(400)}" if medium == "cpc" else None,
        landing_page=f"https://bench.example/p{rnd.randrange(60)}?utm_source={source}",
        referrer=f"https://{source}/" if medium != "(none)" else None,
        first_seen=at, last_seen=at)


def synthetic(n: int, seed: int = 1) -> list[CallRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        day = rnd.randrange(DAYS)
        at = START + timedelta(days=day, seconds=hour_curve(rnd))
        r = rnd.random()
        if r < 0.1:
            att = Attribution("static", channel=f"offline-{rnd.randrange(5)}")
        elif r < 0.15:
            att = Attribution("default")
        else:
            att = Attribution("dynamic" if r < 0.9 else "expired",
                              session=session(i, rnd, at.timestamp() - 300))
        outcome = rnd.choices(("answered", "busy", "no_answer", "cancelled"), (70, 8, 15, 7))[0]
        talk = round(rnd.expovariate(1 / 90), 3) if outcome == "answered" else None
        out.append(CallRecord(
            f"c_{i:07d}", "bench", rnd.choice(list(POOLS)), f"+7916{rnd.randrange(200000):07d}",
            at, ended_at=at + timedelta(seconds=10), outcome=outcome,  # type: ignore[arg-type]
            ring_seconds=round(rnd.uniform(1, 25), 3), talk_seconds=talk,
            first_time_caller=rnd.random() < 0.6, qualified=(talk or 0) >= 30,
            attribution=att))
    return out


async def gather_bounded(calls: Any, limit: int = 48) -> None:
    """Run the (function, argument) pairs, `limit` at a time; a write the store refused
    (Redis's 1 s socket timeout on a loaded machine) is tried again, as the daemon's
    tracking service does."""
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        fn, arg = c
        async with sem:
            for attempt in range(5):
                try:
                    await fn(arg)
                    return
                except StoreError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(1)

    await asyncio.gather(*(one(c) for c in calls))


async def load(stores: list[Store], calls: list[CallRecord], sessions: int,
               limit: int) -> float:
    """Through several store instances at once (as several nodes would write): one
    Redis client's pool of 64 connections alone would make loading take a quarter hour."""
    t0 = time.perf_counter()
    store = stores[0]
    chunk = 20000
    for i in range(0, len(calls), chunk):
        await gather_bounded(((stores[k % len(stores)].save_call, c)
                              for k, c in enumerate(calls[i:i + chunk])), limit)
    rnd = random.Random(2)
    updated = [c for c in calls if rnd.random() < 0.1]
    for i in range(0, len(updated), chunk):
        await gather_bounded(((stores[k % len(stores)].update_call, rep_crm(c, rnd))
                              for k, c in enumerate(updated[i:i + chunk])), limit)
    srnd = random.Random(3)
    for i in range(0, sessions, chunk):
        batch = []
        for j in range(i, min(i + chunk, sessions)):
            at = START.timestamp() + srnd.randrange(DAYS) * 86400 + hour_curve(srnd)
            visitor = session(10_000_000 + j, srnd, at)
            target = stores[j % len(stores)]
            batch.append((functools.partial(target.create_session,
                                            dynamic=srnd.random() < 0.9), visitor))
        await gather_bounded(batch, limit)
    await store.put_spend([
        rep.SpendRow("bench", (START + timedelta(days=d)).date().isoformat(), "google", "cpc",
                     f"campaign-{k}", 100000 + k * 100, "RUB")
        for d in range(DAYS) for k in range(40)])
    return time.perf_counter() - t0


def rep_crm(c: CallRecord, rnd: random.Random) -> CallRecord:
    from dataclasses import replace

    return replace(c, tags=rnd.choice((("hot",), ("hot", "vip"), ("spam",))),
                   lead_status=rnd.choice(("won", "lost", None)),
                   value=rnd.choice((None, 1500.0, 25000.0)))


async def report(store: Store, spec: dict[str, Any]) -> tuple[float, float,
                                                             list[dict[str, Any]]]:
    """Wall seconds, this process's CPU seconds (all of SQLite's work, which runs in the
    store's threads; the client's part only for Redis and PostgreSQL) and the rows."""
    q = rep.ReportQuery(tracker="bench", since=START.timestamp(), until=END.timestamp(),
                        pools=POOLS, **spec)
    t0, c0 = time.perf_counter(), time.process_time()
    calls = await store.report_calls(q)
    visits = await store.report_visits(q) if q.visits_apply() else []
    spend = rep.aggregate_spend(await store.list_spend("bench"), q)
    rows, _ = rep.build_rows(q, calls, visits, spend)
    return time.perf_counter() - t0, time.process_time() - c0, rows


def calibration() -> float:
    """Seconds for 10M iterations of a bare Python loop, printed beside the figures: the
    machine may be shared, and this says how busy it was (compare a quiet run)."""
    t0 = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_store(name: str, url: str, calls: list[CallRecord], sessions: int,
                    repeat: int) -> dict[str, tuple[float, list[dict[str, Any]]]]:
    # SQLite, PostgreSQL: one store (one node); Redis: four clients, as four nodes
    stores = [create_store(url) for _ in range(4 if name == "redis" else 1)]
    for s in stores:
        await s.open()
    store = stores[0]
    try:
        took = await load(stores, calls, sessions, 120 if name == "redis" else 2000)
        if name == "postgres":
            await store.visitor_stats()  # the counters written behind, then the planner's
            import asyncpg  # statistics, as autovacuum gathers them after a bulk load

            conn = await asyncpg.connect(url)
            await conn.execute("VACUUM ANALYZE")
            await conn.close()
        print(f"{name}: loaded {len(calls):,} calls and {sessions:,} sessions in {took:.0f} s",
              flush=True)
        out = {}
        print(f"  (machine load: a 10M-step Python loop takes {calibration():.2f} s now)",
              flush=True)
        for label, spec in QUERIES:
            best, rows = float("inf"), list[dict[str, Any]]()
            times, cpus = [], []
            for _ in range(repeat):
                t, cpu, rows = await report(store, spec)
                times.append(t)
                cpus.append(cpu)
                best = min(best, t)
            out[label] = (best, rows)
            print(f"  {name:6} group_by={label:38} {len(rows):6} rows  "
                  f"{' '.join(f'{t:.2f}' for t in times)} s (best {best:.2f};"
                  f" CPU here {min(cpus):.2f} s)", flush=True)
        return out
    finally:
        for s in stores:
            await s.close()


@contextlib.contextmanager
def redis_server(directory: str) -> Iterator[str]:
    """A redis-server on a free loopback port, in `directory`, without persistence: its URL."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=300_000)
    ap.add_argument("--stores", default="sqlite,redis,postgres")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("command:", " ".join([".venv/bin/python", "tests/bench/bench_reports.py",
                                *sys.argv[1:]]))
    calls = synthetic(args.calls)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        for name in args.stores.split(","):
            if name == "sqlite":
                results[name] = asyncio.run(run_store(
                    name, f"sqlite://{tmp}/bench.db", calls, args.sessions, args.repeat))
                continue
            if name == "postgres":
                server = PostgresServer(durable=True)
                server.start()
                try:
                    results[name] = asyncio.run(run_store(
                        name, server.url, calls, args.sessions, args.repeat))
                finally:
                    server.stop()
                continue
            with redis_server(tmp) as url:
                results[name] = asyncio.run(run_store(
                    name, url, calls, args.sessions, args.repeat))
    if len(results) >= 2:
        first, *others = results.values()
        same = all(first[label][1] == o[label][1] for o in others for label, _ in QUERIES)
        print(f"{', '.join(results)} give the same rows:", same)


if __name__ == "__main__":
    main()
