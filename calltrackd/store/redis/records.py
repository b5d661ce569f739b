"""The Redis store's call records (written with their outbox rows by one script), read
back in pages (through the filter index of callindex.py when filtered), counted for
statistics and reports; spend, CRM updates and retention.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from calltrackd.store.base import (
    AttributionStats,
    CallStats,
    StoreError,
    Visit,
    VisitorStats,
)
from calltrackd.store.codec import (
    call_matches,
    crm_json,
    decode_call,
    decode_cursor,
    decode_session,
    encode_call,
    encode_cursor,
    page_size,
    session_stats_source,
    storable_call,
    timestamp,
    with_crm,
)
from calltrackd.tracking.model import (
    CallRecord,
    WebhookDelivery,
    is_anonymous,
)
from calltrackd.tracking.reports import (
    CallGroup,
    ReportQuery,
    SpendRow,
    VisitGroup,
    aggregate_encoded,
    aggregate_visits,
    call_fact,
    cents,
    encode_crm,
    encode_fact,
)

from .callindex import RedisCallIndex, add_to_index
from .plumbing import (
    _SEP,
    _day,
    _s,
)

log = structlog.get_logger(__name__)


def _calls_key(tracker: str | None) -> str:
    return f"ctd:calls:{tracker}" if tracker else "ctd:calls"


class RedisRecords(RedisCallIndex):
    """Call records, statistics, reports, spend and their retention."""

    # the half of a window's statistics that the other method will ask for: (window,
    # until when it may, "calls" or "attributions", the answer)

    # --- call records ------------------------------------------------------------------

    async def save_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        record = storable_call(record)  # without a field no store can write, never refused
        args: list[Any] = [record.id, record.tracker, timestamp(record.started_at),
                           "" if is_anonymous(record.caller) else record.caller,
                           encode_call(record), len(deliveries)]
        for d in deliveries:
            args += [d.id, d.event_id, d.event, d.tracker, d.url, d.body, d.created_at,
                     d.next_attempt_at, d.kind]
        # this node's open calls, for the restart after a crash (see open_calls)
        args += [f"ctd:open:{self.node_id}", "1" if record.outcome is None else "0"]
        fact = call_fact(record)

        async def run() -> None:
            # the CDR, its outbox rows and its report fact in one MULTI
            async with self.r.pipeline(transaction=True) as p:
                await self._scripts["SAVE_CALL"](args=args, client=p)
                p.hset(f"ctd:rf:{record.tracker}:{fact.day}", record.id, encode_fact(fact))
                p.zadd(f"ctd:rdays:{record.tracker}", {str(fact.day): fact.day})
                p.sadd("ctd:rtrackers", record.tracker)
                add_to_index(p, record, fact)
                await p.execute()

        await self._do(run())

    async def get_call(self, call_id: str) -> CallRecord | None:
        raw = await self._do(self.r.get(f"ctd:call:{call_id}"))
        if not raw:
            return None
        record = decode_call(_s(raw) or "")
        return (await self._with_crm([record]))[0]

    async def _records_in(self, tracker: str | None, since: datetime | None,
                          until: datetime | None) -> AsyncIterator[list[CallRecord]]:
        """The CDRs of the window, newest first, 1,000 at a time; a record that cannot be
        read is logged and left out (statistics never fail on one)."""
        offset = 0
        while rows := await self._calls_in(_calls_key(tracker), since, until, None, 1000,
                                           offset):
            offset += len(rows)
            batch = []
            for raw in await self._do(self.r.mget([f"ctd:call:{c}" for c, _ in rows])):
                if raw is None:
                    continue
                try:
                    batch.append(decode_call(_s(raw) or ""))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("store.record_unreadable", error=repr(exc)[:200])
            yield batch

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
        limit = page_size(limit)
        after: tuple[float, str] | None = decode_cursor(cursor) if cursor else None
        top: float | str | None = None
        if after is not None:
            top = after[0]
            if until is not None and timestamp(until) <= after[0]:
                top = f"({timestamp(until)}"
        # filtered: the index keys of the filter's values (none: no call has them)
        keys = await self._filter_keys(tracker, where) if where else None
        found: list[tuple[CallRecord, float]] = []
        pages = self._pages(keys if keys is not None else [_calls_key(tracker)],
                            since, until, top, first=limit + 1)
        async with contextlib.aclosing(pages):
            async for rows in pages:
                ids = [(cid, ts) for cid, ts in rows if after is None or ts < after[0]
                       or (ts == after[0] and cid < after[1])]
                if not ids:
                    continue
                raws = await self._do(self.r.mget([f"ctd:call:{c}" for c, _ in ids]))
                recs = await self._with_crm([decode_call(_s(raw) or "") if raw else None
                                             for raw in raws])
                for (_cid, ts), rec in zip(ids, recs, strict=True):
                    if rec is None:
                        continue
                    if ((outcome is None or rec.outcome == outcome)
                            and call_matches(rec, where)):
                        found.append((rec, ts))
                        if len(found) > limit:
                            break
                if len(found) > limit:
                    break
        page = found[:limit]
        more = len(found) > limit
        return [r for r, _ in page], (encode_cursor(page[-1][1], page[-1][0].id)
                                      if more else None)

    async def open_calls(self, started_before: float) -> list[CallRecord]:
        key = f"ctd:open:{self.node_id}"
        ids = sorted(_s(m) or "" for m in await self._do(self.r.smembers(key)))
        out: list[CallRecord] = []
        stale: list[str] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            raws = await self._do(self.r.mget([f"ctd:call:{c}" for c in chunk]))
            for call_id, raw in zip(chunk, raws, strict=True):
                rec = decode_call(_s(raw) or "") if raw else None
                if rec is None or rec.outcome is not None:
                    stale.append(call_id)  # closed meanwhile (or gone)
                elif timestamp(rec.started_at) < started_before:
                    out.append(rec)
        if stale:
            await self._do(self.r.srem(key, *stale))
        return sorted(out, key=lambda r: r.started_at)

    # --- statistics --------------------------------------------------------------------

    async def call_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CallStats]:
        """Aggregated from the CDRs in the window (admin use; `window_stats` gives it
        with `attribution_stats` from one pass)."""
        return (await self.window_stats(tracker, since, until))[0]

    async def visitor_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[VisitorStats]:
        """From hourly counters (hour granularity, like the pools' peaks)."""
        lo = int(timestamp(since) // 3600) if since else None
        hi = math.ceil(timestamp(until) / 3600) if until else None
        trackers = [tracker] if tracker else sorted(
            _s(k) or "" for k in await self._do(self.r.smembers("ctd:vtrackers")))
        acc: dict[tuple[str, str, str], list[int]] = {}
        for t in trackers:
            if lo is None or hi is None:
                keys = [_s(k) or "" for k in await self._do(self.r.keys(f"ctd:vis:{t}:*"))]
            else:
                keys = [f"ctd:vis:{t}:{h}" for h in range(lo, hi)]
            for key in keys:
                counts = await self._do(self.r.hgetall(key))
                for field_b, v in counts.items():
                    parts = (_s(field_b) or "").split(_SEP)
                    if len(parts) != 3:  # written by no version of ours: skipped
                        continue
                    src, med, what = parts
                    g = acc.setdefault((t, src, med), [0, 0])
                    g[0 if what == "all" else 1] += int(v)
        return [VisitorStats(t, src or None, med or None, v[0], v[1])
                for (t, src, med), v in sorted(acc.items(), key=lambda kv: (kv[0][0],
                                                                             -kv[1][0]))]

    async def visits(self, tracker: str, since: float, until: float) -> list[Visit]:
        ids = await self._do(self.r.zrangebyscore(f"ctd:visits:{tracker}", since,
                                                  f"({until}"))
        out: list[Visit] = []
        for i in range(0, len(ids), 500):
            chunk = [f"ctd:s:{_s(x)}" for x in ids[i:i + 500]]

            async def run(keys: list[str]) -> list[Any]:
                async with self.r.pipeline(transaction=False) as p:
                    for k in keys:
                        p.hget(k, "data")
                    return list(await p.execute())

            for raw in await self._do(run(chunk)):
                if raw:
                    s = decode_session(_s(raw) or "")
                    out.append(Visit(tracker, s.first_seen, s.last_seen,
                                     *session_stats_source(s)))
        return out

    async def attribution_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AttributionStats]:
        return (await self.window_stats(tracker, since, until))[1]

    async def window_stats(
        self,
        tracker: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[CallStats], list[AttributionStats]]:
        """Both statistics of the CDRs in the window, from one read of each."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        attributions: dict[tuple[str, str | None, str], list[float]] = {}
        async for batch in self._records_in(tracker, since, until):
            for rec in batch:
                att = rec.attribution
                sess = att.session if att else None
                src, med = session_stats_source(sess) if sess else (None, None)
                key = (rec.tracker, att.kind if att else "none", att.channel if att else None,
                       src, med)
                g = groups.setdefault(key, [0, 0, 0, 0, 0])
                g[0] += 1
                g[1] += rec.outcome == "answered"
                g[2] += rec.outcome is not None and rec.outcome != "answered"
                g[3] += rec.qualified is True
                g[4] += rec.first_time_caller is True
                a = attributions.setdefault((rec.tracker, att.pool if att else None,
                                             att.kind if att else "none"), [0, 0, 0.0])
                a[0] += 1
                if att is not None and att.confidence is not None:
                    a[1] += 1
                    a[2] += att.confidence
        calls = [CallStats(*k, *v) for k, v in sorted(groups.items(),
                                                      key=lambda kv: (kv[0][0], -kv[1][0]))]
        return calls, [AttributionStats(t, p, k, int(v[0]), int(v[1]), v[2])
                       for (t, p, k), v in sorted(attributions.items(),
                                                  key=lambda kv: str(kv[0]))]

    # --- end of holder history ----------------------------------------------------------

    # --- reports, spend, CRM updates, retention --------------------------------------
    # ctd:rf:T:D  HASH call id -> report fact (reports.encode_fact) of tracker T, day D
    # ctd:ru:T:D  HASH call id -> CRM update: "crm" JSON (the call object) and the fact's
    #             CRM part (reports.encode_crm), as two fields "<id>" and "<id>\x1ef"
    # ctd:rv:T:D  HASH visit cell -> visitors;  ctd:rd:T:D  the same, given a pool number
    # ctd:rdays:T ZSET days with facts or visits;  ctd:rtrackers SET;  ctd:spend HASH

    async def _with_crm(self, records: Sequence[CallRecord | None]
                        ) -> list[CallRecord | None]:
        async def run() -> list[Any]:
            async with self.r.pipeline(transaction=False) as p:
                for rec in records:
                    if rec is not None:
                        p.hget(f"ctd:ru:{rec.tracker}:{_day(rec)}", rec.id)
                return list(await p.execute())

        crm = iter(await self._do(run()) if any(records) else [])
        return [None if rec is None else with_crm(rec, next(crm)) for rec in records]

    async def update_call(
        self, record: CallRecord, deliveries: Sequence[WebhookDelivery] = ()
    ) -> None:
        day = _day(record)
        key = f"ctd:ru:{record.tracker}:{day}"
        fact = call_fact(record)

        async def run() -> None:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key, mapping={record.id: crm_json(record),
                                     f"{record.id}\x1ef": encode_crm(record.tags,
                                                                     cents(record.value))})
                p.hsetnx(f"ctd:rf:{record.tracker}:{day}", record.id,
                         encode_fact(fact))  # a call older than reports
                p.zadd(f"ctd:rdays:{record.tracker}", {str(day): day})
                p.sadd("ctd:rtrackers", record.tracker)
                add_to_index(p, record, fact)
                for d in deliveries:
                    p.hsetnx(f"ctd:dlv:{d.id}", "id", d.id)
                    p.hset(f"ctd:dlv:{d.id}", mapping={
                        "event_id": d.event_id, "event": d.event, "tracker": d.tracker,
                        "url": d.url, "body": d.body, "created_at": d.created_at,
                        "next_attempt_at": d.next_attempt_at, "attempts": 0,
                        "status": "pending", "last_error": "", "kind": d.kind})
                    p.zadd("ctd:outbox:due", {d.id: d.next_attempt_at})
                    p.zadd("ctd:outbox:all", {d.id: d.created_at})
                await p.execute()

        await self._do(run())

    async def _report_keys(self, query: ReportQuery) -> list[tuple[str, int]]:
        trackers = [query.tracker] if query.tracker else sorted(
            _s(t) or "" for t in await self._do(self.r.smembers("ctd:rtrackers")))
        lo = int(query.since // 86400)
        hi: float | str = "+inf" if query.until == float("inf") else query.until // 86400
        out = []
        for t in trackers:
            days = await self._do(self.r.zrangebyscore(f"ctd:rdays:{t}", lo, hi))
            out += [(t, int(d)) for d in days]
        return out

    async def _day_of(self, *reads: tuple[str, str]) -> list[Any]:
        """One day's report hashes; a read that times out (a day is megabytes, the socket
        timeout one second) is tried twice more before the report fails."""
        for attempt in range(3):
            try:
                async with self.r.pipeline(transaction=False) as p:
                    for command, key in reads:
                        getattr(p, command)(key)
                    return list(await self._do(p.execute()))
            except StoreError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def report_calls(self, query: ReportQuery) -> list[CallGroup]:
        """Facts fetched a day at a time and aggregated in this process."""
        facts: list[bytes] = []
        crm: dict[bytes, bytes] = {}
        for tracker, day in await self._report_keys(query):
            vals, upd = await self._day_of(
                ("hvals", f"ctd:rf:{tracker}:{day}"), ("hgetall", f"ctd:ru:{tracker}:{day}"))
            facts += vals
            for k, v in upd.items():
                if k.endswith(b"\x1ef"):
                    crm[k[:-2]] = v
        return aggregate_encoded(facts, crm, query)

    async def report_visits(self, query: ReportQuery) -> list[VisitGroup]:
        cells: list[tuple[list[str], int, int]] = []
        for tracker, day in await self._report_keys(query):
            visitors, dynamic = await self._day_of(
                ("hgetall", f"ctd:rv:{tracker}:{day}"), ("hgetall", f"ctd:rd:{tracker}:{day}"))
            for field, n in visitors.items():
                cell = (_s(field) or "").split(_SEP)
                cells.append((cell, int(n), int(dynamic.get(field) or 0)))
        return aggregate_visits(cells, query)

    async def put_spend(self, rows: Sequence[SpendRow]) -> None:
        if rows:
            await self._do(self.r.hset("ctd:spend", mapping={
                _SEP.join(r.key()): f"{r.amount_cents}{_SEP}{r.currency}" for r in rows}))

    async def list_spend(
        self, tracker: str | None = None, since_day: str | None = None,
        until_day: str | None = None,
    ) -> list[SpendRow]:
        out = []
        for field, value in (await self._do(self.r.hgetall("ctd:spend"))).items():
            t, day, source, medium, campaign = (_s(field) or "").split(_SEP)
            amount, currency = (_s(value) or "").split(_SEP)
            if ((tracker is None or t == tracker) and (since_day is None or day >= since_day)
                    and (until_day is None or day < until_day)):
                out.append(SpendRow(t, day, source, medium, campaign, int(amount), currency))
        return sorted(out, key=lambda r: r.key())

    async def purge_calls(self, before: float) -> int:
        """CDRs, their facts and updates, in batches of 5,000; visit counters by day."""
        total = 0
        trackers = {_s(t) or "" for t in await self._do(self.r.smembers("ctd:rtrackers"))}
        for tracker in sorted(trackers):
            while True:
                rows = await self._do(self.r.zrangebyscore(
                    f"ctd:calls:{tracker}", "-inf", f"({before}", start=0, num=5000,
                    withscores=True))
                if not rows:
                    break
                async with self.r.pipeline(transaction=True) as p:
                    for member, score in rows:
                        cid = _s(member) or ""
                        day = int(float(score) // 86400)
                        p.delete(f"ctd:call:{cid}")
                        p.hdel(f"ctd:rf:{tracker}:{day}", cid)
                        p.hdel(f"ctd:ru:{tracker}:{day}", cid, f"{cid}\x1ef")
                    ids = [m for m, _ in rows]
                    p.zrem(f"ctd:calls:{tracker}", *ids)
                    p.zrem("ctd:calls", *ids)
                    await self._do(p.execute())
                total += len(rows)
            await self._purge_index(tracker, before)
            cutoff = int(before // 86400)
            for d in await self._do(self.r.zrangebyscore(f"ctd:rdays:{tracker}", "-inf",
                                                         f"({cutoff}")):
                old = _s(d)
                await self._do(self.r.delete(*(f"ctd:{k}:{tracker}:{old}"
                                               for k in ("rf", "ru", "rv", "rd"))))
                await self._do(self.r.zrem(f"ctd:rdays:{tracker}", d))
        return total


