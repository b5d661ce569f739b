"""GET /v1/calls's filters and GET /v1/stats's store reads on the Redis store.

    .venv/bin/python tests/bench/bench_calls_filter.py [--calls 20000] [--repeat 5]
                                                       [--backfill]

Loads the synthetic calls of bench_reports.py (`--calls` of them, a tenth of another
tracker, a tenth tagged; ten of a rare static channel and ten with a rare tag) through
`save_call` and `update_call` into a redis-server started here on a loopback port, then
times the store calls the handlers make: `list_calls` (a page of 50) with a filter that
matches nothing, one that matches ten calls, a common one and none, for one tracker and
for all; and `window_stats` (`call_stats` + `attribution_stats`), as `/v1/stats` asks. Prints
Redis's memory after the load. `--backfill` also times a store opened on calls whose
filter index was removed, until its backfill is done (a store written before the index).
Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calltrackd.store import create_store
from calltrackd.store.base import Store
from calltrackd.tracking.model import Attribution, CallRecord
from tests.bench.bench_reports import (
    END,
    START,
    calibration,
    gather_bounded,
    redis_server,
    rep_crm,
    synthetic,
)

LISTS: list[tuple[str, str | None, dict[str, str]]] = [
    ("channel=nosuch", "bench", {"channel": "nosuch"}),
    ("source=nosuch", "bench", {"source": "nosuch"}),
    ("campaign=nosuch", "bench", {"campaign": "nosuch"}),
    ("tag=nosuch", "bench", {"tag": "nosuch"}),
    ("channel=rare (10 calls)", "bench", {"channel": "rare-billboard"}),
    ("tag=rare (10 calls)", "bench", {"tag": "rare-tag"}),
    ("source=google (common)", "bench", {"source": "google"}),
    ("no filter", "bench", {}),
    ("all trackers, channel=nosuch", None, {"channel": "nosuch"}),
    ("all trackers, tag=rare", None, {"tag": "rare-tag"}),
]


def workload(n: int) -> tuple[list[CallRecord], list[CallRecord]]:
    """The calls, and the CRM updates of some of them (`update_call`)."""
    import random

    calls = [replace(c, tracker="other") if i % 10 == 0 else c  # a second tracker
             for i, c in enumerate(synthetic(n))]
    step = max(1, n // 10)
    for k in range(10):  # ten calls of a channel no other call has, spread over the period
        i = k * step + 1
        calls[i] = replace(calls[i], attribution=Attribution("static", channel="rare-billboard"))
    rnd = random.Random(2)
    updates = [rep_crm(c, rnd) for c in calls if rnd.random() < 0.1]
    for k in range(10):
        c = calls[k * step + 3]
        updates.append(replace(c, tags=("rare-tag",)))
    return calls, updates


async def timed(repeat: int, fn: Any) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - t0)
    return times, result


def line(label: str, times: list[float], what: str) -> None:
    print(f"  {label:34} {what:>10}  {' '.join(f'{t * 1000:.0f}' for t in times)} ms "
          f"(best {min(times) * 1000:.1f} ms)", flush=True)


async def run(url: str, n: int, repeat: int, backfill: bool) -> None:
    stores: list[Store] = [create_store(url) for _ in range(4)]  # four nodes' clients
    for s in stores:
        await s.open()
    store = stores[0]
    try:
        calls, updates = workload(n)
        t0 = time.perf_counter()
        await gather_bounded(((stores[k % 4].save_call, c) for k, c in enumerate(calls)), 120)
        await gather_bounded(((stores[k % 4].update_call, c) for k, c in enumerate(updates)),
                             120)
        print(f"loaded {len(calls):,} calls ({len(updates):,} CRM updates) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        r = store.r  # type: ignore[attr-defined]
        if hasattr(store, "_backfill_index"):  # a version with the filter index
            t0 = time.perf_counter()
            await until_indexed(r)
            print(f"  the index backfill at open was done {time.perf_counter() - t0:.1f} s "
                  "after the load", flush=True)
        info = await r.info("memory")
        print(f"  redis used_memory after the load: {info['used_memory'] / 2**20:.1f} MiB; "
              f"keys: {await r.dbsize():,}", flush=True)
        print(f"  (machine load: a 10M-step Python loop takes {calibration():.2f} s now)",
              flush=True)
        for label, tracker, where in LISTS:
            times, (page, _) = await timed(repeat, lambda t=tracker, w=where: store.list_calls(
                tracker=t, limit=50, where=w))
            line(f"list_calls {label}", times, f"{len(page)} calls")

        both: list[float] = []
        for _ in range(repeat):  # as /v1/stats asks: both statistics of one window
            t0 = time.perf_counter()
            cs, ats = await store.window_stats("bench", START, END)
            both.append(time.perf_counter() - t0)
            line("window_stats", [both[-1]], f"{sum(c.calls for c in cs):,} calls, "
                 f"{sum(a.calls for a in ats):,} attributed")
        line("window_stats (call_stats + attribution_stats)", both, "")
        if backfill:
            await backfill_time(url, store)
    finally:
        for s in stores:
            await s.close()


async def backfill_time(url: str, store: Store) -> None:
    """Remove the filter index and its marker, as on a store written before it, and time
    a store opened on it until its backfill is done."""
    r = store.r  # type: ignore[attr-defined]
    keys = [k async for k in r.scan_iter("ctd:ci:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await r.delete(*keys[i:i + 1000])
    await r.delete("ctd:cibackfill")
    fresh = create_store(url)
    t0 = time.perf_counter()
    await fresh.open()
    try:
        await until_indexed(r)
        took = time.perf_counter() - t0
        print(f"  backfill of the filter index over {len(keys):,} index keys: {took:.2f} s",
              flush=True)
        page, _ = await fresh.list_calls(tracker="bench", where={"tag": "rare-tag"})
        print(f"  after the backfill, tag=rare finds {len(page)} calls", flush=True)
    finally:
        await fresh.close()


async def until_indexed(r: Any) -> None:
    for _ in range(100_000):  # every 50 ms
        if await r.get("ctd:cibackfill") == b"done":
            return
        await asyncio.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backfill", action="store_true")
    args = ap.parse_args()
    print("command:", " ".join([".venv/bin/python", "tests/bench/bench_calls_filter.py",
                                *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="bench-calls-filter-") as tmp, \
            redis_server(tmp) as url:
        asyncio.run(run(url, args.calls, args.repeat, args.backfill))

if __name__ == "__main__":
    main()
