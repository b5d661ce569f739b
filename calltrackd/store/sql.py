"""What the SQL stores (`sqlite/`, `postgres/`) share in writing and reading statements:
parameters in either style, the WHERE of a tracker and time window, and `list_calls`
pages read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from calltrackd.store.codec import decode_call, encode_cursor, page_size, timestamp, with_crm
from calltrackd.tracking.model import CallRecord


class Params:
    """The parameters of one statement in the order they are added: `?` each (SQLite),
    or `$1`, `$2`, ... with a cast if given (PostgreSQL)."""

    def __init__(self, numbered: bool) -> None:
        self.values: list[Any] = []
        self._numbered = numbered

    def __call__(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}" if self._numbered else "?"


def sql_where(conds: Sequence[str]) -> str:
    """" WHERE c1 AND c2 ...", or "" without conditions."""
    return f" WHERE {' AND '.join(conds)}" if conds else ""


def window(p: Params, tracker: str | None, since: datetime | None, until: datetime | None,
           col: str = "started_ts", prefix: str = "") -> list[str]:
    """The conditions of the tracker (if any) and the window [since, until) of `col`."""
    conds = []
    if tracker is not None:
        conds.append(f"{prefix}tracker = {p(tracker)}")
    if since is not None:
        conds.append(f"{prefix}{col} >= {p(timestamp(since), '::float8')}")
    if until is not None:
        conds.append(f"{prefix}{col} < {p(timestamp(until), '::float8')}")
    return conds


def calls_page(rows: Sequence[Sequence[Any]], limit: int) -> tuple[list[CallRecord], str | None]:
    """A `list_calls` answer from rows (started_ts, id, data, crm) newest first, read with
    a limit of `limit + 1`: the page, and the cursor after it when there is more."""
    page = rows[:limit]
    more = len(rows) > limit
    return [with_crm(decode_call(r[2]), r[3]) for r in page], (
        encode_cursor(page[-1][0], page[-1][1]) if more else None)


def deliveries_sql(p: Params, columns: str, status: str | None, kind: str | None,
                   limit: int) -> str:
    """`list_deliveries`: the newest outbox rows of a status and kind (each if given)."""
    conds = [f"{col} = {p(v)}" for col, v in (("status", status), ("kind", kind)) if v]
    return (f"SELECT {columns} FROM deliveries{sql_where(conds)}"
            f" ORDER BY created_at DESC, id DESC LIMIT {p(page_size(limit))}")


def spend_sql(p: Params, tracker: str | None, since_day: str | None,
              until_day: str | None) -> str:
    """`list_spend`: the spend rows of a tracker and days [since_day, until_day)."""
    conds = [f"{c} {p(v)}" for c, v in (("tracker =", tracker), ("day >=", since_day),
                                         ("day <", until_day)) if v is not None]
    return (f"SELECT * FROM spend{sql_where(conds)}"
            " ORDER BY tracker, day, source, medium, campaign")
