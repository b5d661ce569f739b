"""The PostgreSQL store's call records: written through and group-committed, read back
in pages, counted for statistics; CRM updates and retention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from calltrackd.store.base import AttributionStats, CallStats, StoreError, Visit, VisitorStats
from calltrackd.store.codec import (
    FACT_FILTERS,
    crm_json,
    decode_call,
    decode_cursor,
    encode_call,
    page_size,
    session_stats_source,
    storable_call,
    timestamp,
    with_crm,
)
from calltrackd.store.sql import Params, calls_page, sql_where, window
from calltrackd.store.writebehind import CdrItem
from calltrackd.tracking.model import CallRecord, WebhookDelivery, is_anonymous
from calltrackd.tracking.reports import call_fact, cents

from .outbox import delivery_row
from .plumbing import (
    _CALL_UPSERT,
    _CALL_WITH_CRM,
    _CALLER_INSERT,
    _DELIVERY_INSERT,
    _FACT_UPSERT,
    PostgresPlumbing,
    _fact_row,
    _t,
)

CDR_BATCH_WINDOW = 0.01  # seconds a call record may wait for others to share its write


class PostgresRecords(PostgresPlumbing):
    """Call records, statistics, CRM updates and their retention."""

    _cdr_window = CDR_BATCH_WINDOW

    # --- call records: written through, group-committed ------------------------------

    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        self._check_open()
        record = storable_call(record)
        att = record.attribution
        session = att.session if att else None
        started = timestamp(record.started_at)
        row = (record.id, _t(record.tracker), self.node_id, started, record.outcome,
               att.kind if att else None, _t(att.channel) if att else None,
               *map(_t, session_stats_source(session) if session else (None, None)),
               record.qualified, record.first_time_caller,
               _t(att.pool) if att else None, att.confidence if att else None,
               _t(encode_call(record)))
        caller = None if is_anonymous(record.caller) else (
            record.tracker, _t(record.caller) or "", started)
        await self._queue_call(row, [delivery_row(d) for d in deliveries], caller,
                               _fact_row(call_fact(record)))

    async def _commit_calls(self, batch: list[CdrItem]) -> list[BaseException | None]:
        try:
            await self._write_calls(batch)
            return [None] * len(batch)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ValueError):
            pass  # a row refused: each record alone, so that it fails alone
        errors: list[BaseException | None] = []
        for item in batch:
            try:
                await self._write_calls([item])
                errors.append(None)
            except Exception as exc:
                errors.append(exc if isinstance(exc, StoreError)
                              else StoreError(f"postgresql: {exc!r}"))
        return errors

    async def _write_calls(self, batch: list[CdrItem]) -> None:
        if self._pool is None:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire(timeout=10) as c, c.transaction():
                await c.executemany(_CALL_UPSERT, [item[0] for item in batch])
                drows = [d for item in batch for d in item[1]]
                if drows:
                    await c.executemany(_DELIVERY_INSERT, drows)
                callers = [item[2] for item in batch if item[2] is not None]
                if callers:
                    await c.executemany(_CALLER_INSERT, callers)
                await c.executemany(_FACT_UPSERT, [item[3] for item in batch])
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.ConnectionDoesNotExistError) as exc:
            raise StoreError(f"postgresql: {exc!r}") from exc

    async def get_call(self, call_id: str) -> CallRecord | None:
        row = await self._fetchrow(f"{_CALL_WITH_CRM} WHERE c.id = $1", call_id)
        return with_crm(decode_call(row[2]), row[3]) if row else None

    async def list_calls(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> tuple[list[CallRecord], str | None]:
        a = Params(numbered=True)
        conds = window(a, tracker, since, until, prefix="c.")
        if outcome is not None:
            conds.append(f"c.outcome = {a(outcome)}")
        match = where or {}
        for key in FACT_FILTERS:  # as the report facts have them
            if key in match:
                conds.append(f"r.{key} = {a(match[key])}")
        if "tag" in match:
            conds.append("EXISTS (SELECT 1 FROM call_tags t WHERE t.id = c.id"
                         f" AND t.tag = {a(match['tag'])})")
        if "carrier" in match:  # in the CDR only (records before it have none)
            conds.append(f"c.data::json ->> 'carrier' = {a(match['carrier'])}")
        if cursor is not None:
            ts, call_id = decode_cursor(cursor)
            conds.append(f"(c.started_ts, c.id) < ({a(ts, '::float8')}, {a(call_id)})")
        limit = page_size(limit)
        rows = await self._fetch(
            f"{_CALL_WITH_CRM}{sql_where(conds)} ORDER BY c.started_ts DESC, c.id DESC"
            f" LIMIT {a(limit + 1)}", *a.values)
        return calls_page(rows, limit)

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        rows = await self._fetch(
            "SELECT data FROM calls WHERE node = $1 AND outcome IS NULL AND started_ts < $2"
            " ORDER BY started_ts", self.node_id, started_before)
        return [decode_call(r[0]) for r in rows]


    # --- statistics ------------------------------------------------------------------

    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]:
        a = Params(numbered=True)
        clause = sql_where(window(a, tracker, since, until))
        rows = await self._fetch(
            "SELECT tracker, coalesce(kind, 'none'), channel, utm_source, utm_medium, count(*),"
            " count(*) FILTER (WHERE outcome = 'answered'),"
            " count(*) FILTER (WHERE outcome <> 'answered'), count(*) FILTER (WHERE qualified),"
            f" count(*) FILTER (WHERE first_time) FROM calls{clause}"
            " GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 6 DESC", *a.values)
        return [CallStats(*r) for r in rows]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        await self._flush_for_count()  # sessions are written behind: count the newest too
        a = Params(numbered=True)
        clause = sql_where(window(a, tracker, since, until, col="first_seen"))
        rows = await self._fetch(
            "SELECT tracker, utm_source, utm_medium, count(*), count(*) FILTER (WHERE dynamic)"
            f" FROM sessions{clause} GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC", *a.values)
        return [VisitorStats(*r) for r in rows]

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        await self._flush_behind()
        rows = await self._fetch(
            "SELECT first_seen, last_seen, utm_source, utm_medium FROM sessions"
            " WHERE tracker = $1 AND first_seen >= $2 AND first_seen < $3 ORDER BY first_seen",
            tracker, since, until)
        return [Visit(tracker, *r) for r in rows]

    async def window_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[CallStats], list[AttributionStats]]:
        return (await self.call_stats(tracker, since, until),
                await self.attribution_stats(tracker, since, until))

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        a = Params(numbered=True)
        clause = sql_where(window(a, tracker, since, until))
        rows = await self._fetch(
            "SELECT tracker, att_pool, coalesce(kind, 'none'), count(*), count(confidence),"
            f" coalesce(sum(confidence), 0) FROM calls{clause} GROUP BY 1, 2, 3", *a.values)
        return [AttributionStats(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in rows]

    # --- CRM updates, retention ---------------------------------------------------------

    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        crm, value = crm_json(record), cents(record.value)
        async with self._conn() as c, c.transaction():
            status = await c.execute(
                "UPDATE report_calls SET crm = $2, value_cents = $3 WHERE id = $1",
                record.id, _t(crm), value)
            if status.endswith(" 0"):  # no fact yet (the record is older than its CDR)
                await c.execute(_FACT_UPSERT, *_fact_row(call_fact(storable_call(record))))
                await c.execute("UPDATE report_calls SET crm = $2, value_cents = $3"
                                " WHERE id = $1", record.id, _t(crm), value)
            await c.execute("DELETE FROM call_tags WHERE id = $1", record.id)
            if record.tags:
                await c.execute("INSERT INTO call_tags SELECT $1, t FROM unnest($2::text[]) t"
                                " ON CONFLICT DO NOTHING", record.id,
                                [_t(t) for t in record.tags])
            if deliveries:
                await c.executemany(_DELIVERY_INSERT, [delivery_row(d) for d in deliveries])


    async def purge_calls(self, before: float) -> int:
        """In batches of 5,000 calls, each its own transaction."""
        total = 0
        while True:
            async with self._conn() as c, c.transaction():
                ids = [r[0] for r in await c.fetch(
                    "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE started_ts < $1"
                    " LIMIT 5000) RETURNING id", before)]
                facts = [r[0] for r in await c.fetch(
                    "DELETE FROM report_calls WHERE id IN (SELECT id FROM report_calls"
                    " WHERE ts < $1 LIMIT 5000) RETURNING id", before)]
                await c.execute("DELETE FROM call_tags WHERE id = ANY($1::text[])", facts)
                await c.execute("DELETE FROM report_visits WHERE hour < $1",
                                int(before // 3600))
            n = max(len(ids), len(facts))
            total += n
            if n == 0:
                return total
