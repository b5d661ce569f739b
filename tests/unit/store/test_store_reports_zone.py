"""Reports in a tracker's time zone give the same groups on every store as the reference
aggregation: the synthetic calls span New York's change from EDT to EST (2026-11-01)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import test_store_contract
from test_store_reports import DAY0, canonical, each, query, synthetic_calls, visit

from calltrackd.store.base import Store
from calltrackd.tracking import reports as rep

store = test_store_contract.store  # the fixture: each test runs on SQLite and on Redis
ZONED: list[dict[str, Any]] = [
    {"group_by": ("day", "hour", "weekday"), "zone": "America/New_York"},
    {"group_by": ("day", "campaign"), "zone": "Asia/Kolkata"},  # +05:30
    {"group_by": ("weekday",), "zone": "America/New_York",
     "filters": {"hour": frozenset({0, 1, 22, 23})},
     "since": (DAY0 + timedelta(hours=4)).timestamp(),
     "until": (DAY0 + timedelta(days=4, hours=5)).timestamp()},
    {"group_by": ("tag", "day"), "zone": "Europe/Moscow",
     "filters": {"day": frozenset({rep.day_number("2026-11-02")})}},
]


async def test_zoned_reports_count_the_same_on_every_store(store: Store) -> None:
    records = synthetic_calls(400)
    await each(store.save_call(r) for r in records)
    facts = [rep.call_fact(r) for r in records]
    for spec in ZONED:
        q = query(spec)
        assert canonical(await store.report_calls(q)) == canonical(
            rep.aggregate_calls(facts, q)), spec


async def test_zoned_visits_are_counted_on_local_days(store: Store) -> None:
    rnd = random.Random(5)
    sessions = [visit(i, rnd, DAY0 + timedelta(minutes=rnd.randrange(0, 3 * 1440)))
                for i in range(200)]
    await each(store.create_session(s, dynamic=True) for s in sessions)
    q = query({"group_by": ("day", "hour"), "zone": "America/New_York"})
    cells = [(rep.visit_cell(s), 1, 1) for s in sessions]
    assert canonical(await store.report_visits(q)) == canonical(rep.aggregate_visits(cells, q))
