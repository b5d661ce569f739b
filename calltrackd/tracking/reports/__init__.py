"""Reports (`GET /v1/reports`): calls, visitors, spend and revenue by any of the
dimensions of `DIMENSIONS`. Pure: no I/O, no clock.

Three kinds of facts feed a report, and each store keeps them so that a report over 90
days of a million calls is a scan of narrow rows, not of CDRs:
- `CallFact`: one per call, derived from the CDR (`call_fact`) and its CRM update
  (tags, lead_status, value from `PATCH /v1/calls/{id}`);
- visit cells: visitor sessions counted at write time per tracker, hour and the visit's
  traffic source (`visit_cell`), with how many of them got a pool number;
- spend rows: ad spend per tracker, day, source, medium and campaign (`PUT /v1/spend`).

A store answers a `ReportQuery` with `CallGroup`s (SQL on SQLite, `aggregate_encoded` in
Python on Redis: both yield the same integers as `aggregate_calls`, sums are in
milliseconds and cents) and `VisitGroup`s; `build_rows` joins them with spend into the
answer's rows.

Days, hours and weekdays are local to the query's `zone` (the tracker's `timezone`,
DST-correct): a call's local day and hour come from its timestamp and the zone's UTC
offsets over the period (`zone_segments`); the period itself is given in unix seconds
(the HTTP layer makes `since`/`until` days local midnights). Visit cells are counted per
UTC hour and shown at that hour's local time (exact for zones whose offsets are whole
hours). Money is kept in cents (integers) so that sums are exact on every store.

The parts, each importing only those before it (and the vocabulary, tracking/model.py):
- `localtime.py`: a zone's offsets over a period, local days and hours, day numbers;
- `query.py`: the dimensions and `ReportQuery` (with `time_sql`, its local times in SQL);
- `facts.py`: a call's traffic source and `CallFact`, a visit's cell;
- `groups.py`: `aggregate_calls` and `aggregate_visits`, the reference aggregation;
- `encoded.py`: facts as the Redis store keeps them (text) and their aggregation;
- `spend.py`: spend rows, their sums, the coarser query that can carry spend;
- `rows.py`: the answer's rows and totals.
Everything is importable from here, `calltrackd.tracking.reports`, as before the split.
"""

from __future__ import annotations

from .encoded import FACT_FIELDS, SEP, aggregate_encoded, encode_crm, encode_fact
from .facts import (
    LEAD_STATUSES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    CallFact,
    VisitCell,
    call_fact,
    call_traffic,
    cents,
    landing_page,
    referrer_domain,
    session_traffic,
    visit_cell,
)
from .groups import CallGroup, VisitGroup, aggregate_calls, aggregate_visits, cell_value
from .localtime import (
    DAY,
    TIME_DIMENSIONS,
    Segments,
    day_number,
    day_text,
    local_date,
    local_day_hour,
    local_midnight,
    local_ts_sql,
    offset_at,
    weekday,
    zone_segments,
)
from .query import DIMENSIONS, SPEND_DIMENSIONS, VISIT_DIMENSIONS, ReportQuery, time_sql
from .rows import build_rows
from .spend import SpendRow, aggregate_spend, rollup, spend_query, spend_value

__all__ = [
    "DAY",
    "DIMENSIONS",
    "FACT_FIELDS",
    "LEAD_STATUSES",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "SEP",
    "SPEND_DIMENSIONS",
    "TIME_DIMENSIONS",
    "VISIT_DIMENSIONS",
    "CallFact",
    "CallGroup",
    "ReportQuery",
    "Segments",
    "SpendRow",
    "VisitCell",
    "VisitGroup",
    "aggregate_calls",
    "aggregate_encoded",
    "aggregate_spend",
    "aggregate_visits",
    "build_rows",
    "call_fact",
    "call_traffic",
    "cell_value",
    "cents",
    "day_number",
    "day_text",
    "encode_crm",
    "encode_fact",
    "landing_page",
    "local_date",
    "local_day_hour",
    "local_midnight",
    "local_ts_sql",
    "offset_at",
    "referrer_domain",
    "rollup",
    "session_traffic",
    "spend_query",
    "spend_value",
    "time_sql",
    "visit_cell",
    "weekday",
    "zone_segments",
]
