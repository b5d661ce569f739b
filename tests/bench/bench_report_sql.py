"""Where the SQLite report queries spend their time: each report's SQL (as the store runs
it) timed as is and with count(DISTINCT caller) left out, on a synthetic report_calls
table of N calls (a tenth tagged). Prints the command and the machine's load beside it.

    .venv/bin/python tests/bench/bench_report_sql.py --calls 1000000
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time

from calltrackd.store.sqlite import plumbing
from calltrackd.store.sqlite.records import _report_sql
from calltrackd.tracking.reports import ReportQuery

GROUPS: tuple[tuple[str, ...], ...] = (("tag",), ("campaign", "term"), ("source", "medium"),
                                       ("day",))


def load(conn: sqlite3.Connection, calls: int) -> None:
    conn.executescript(plumbing._REPORT_SCHEMA)
    rnd = random.Random(1)
    rows: list[tuple[object, ...]] = []
    tags: list[tuple[str, str]] = []
    for _ in range(calls):
        ts = 1.7e9 + rnd.random() * 90 * 86400
        cpc = rnd.random() < 0.4
        rid = f"call-{rnd.getrandbits(64):016x}"
        rows.append((
            "bench", ts, rid, int(ts // 86400), int(ts // 3600) % 24, f"+7{rnd.randrange(100)}",
            f"+79{rnd.randrange(200000)}", "paid", "google", "cpc" if cpc else "organic",
            f"campaign-{rnd.randrange(40)}" if cpc else None,
            f"term {rnd.randrange(400)}" if cpc else None, None, f"/p{rnd.randrange(60)}",
            None, None, int(rnd.random() < 0.6), rnd.choice(("answered", "missed")),
            int(rnd.random() < 0.5), rnd.randrange(30000), rnd.randrange(300000), None, None))
        if rnd.random() < 0.1:
            tags += [(rid, t) for t in rnd.choice((("hot",), ("hot", "vip"), ("spam",)))]
    conn.executemany(f"INSERT INTO report_calls VALUES ({','.join('?' * 23)})", rows)
    conn.executemany("INSERT INTO call_tags VALUES (?, ?)", tags)
    conn.commit()


def timed(conn: sqlite3.Connection, sql: str, args: list[object]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = len(conn.execute(sql, args).fetchall())
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    args = ap.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))
    with tempfile.TemporaryDirectory(prefix="bench-report-sql-") as tmp:
        conn = sqlite3.connect(f"{tmp}/r.db")
        t0 = time.perf_counter()
        load(conn, args.calls)
        print(f"loaded {args.calls:,} calls in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        sum(range(10_000_000))
        print(f"  (machine load: sum(range(10M)) takes {time.perf_counter() - t0:.2f} s now)")
        for gb in GROUPS:
            q = ReportQuery(group_by=gb, tracker="bench", since=0.0, until=1e10)
            sql, qargs = _report_sql(q)
            full, n = timed(conn, sql, qargs)
            bare, _ = timed(conn, sql.replace("count(DISTINCT r.caller)", "0"), qargs)
            print(f"  group_by={','.join(gb):16} {n:6} rows  {full:.2f} s;"
                  f" without unique callers {bare:.2f} s")
        conn.close()


if __name__ == "__main__":
    main()
