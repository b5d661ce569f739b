"""The write-behind of the one-node stores (store/writebehind.py) on SQLite: closing the
store while the background write is under way writes each change once."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from test_store_reports import DAY0, query, visit

from calltrackd.store.sqlite import SqliteStore


async def test_closing_while_the_write_behind_writes_counts_each_visit_once(
        tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/behind.db"
    s = SqliteStore.from_url(url)
    await s.open()
    rnd = random.Random(7)
    for i in range(3000):  # more than 2,000 pending: the write-behind is woken at once
        await s.create_session(visit(i, rnd, DAY0), False)
    for _ in range(10_000):  # until its transaction is on the writer thread
        if s._flush_lock.locked():
            break
        await asyncio.sleep(0)
    assert s._flush_lock.locked()
    await s.close()
    s = SqliteStore.from_url(url)
    await s.open()
    try:
        (total,) = await s.report_visits(query({"group_by": ()}))
        assert total.visitors == 3000
        assert sum(v.visitors for v in await s.visitor_stats()) == 3000
    finally:
        await s.close()
