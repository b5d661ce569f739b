"""The Redis store's sorted sets of calls: by tracker and start time (written by the CDR
script), and by the values `GET /v1/calls` filters on, so that a rare filter reads only
the calls that have its value instead of every CDR of the period.

    ctd:ci:T:F:V   ZSET call id -> started_at (unix seconds): tracker T's calls whose F is
                   V (channel, source, campaign as `call_fact` makes them; tag: one of
                   the call's tags; carrier: the carrier entry it came in by)
    ctd:cikeys:T   SET  tracker T's ctd:ci keys (what the purge goes through)
    ctd:cibackfill "done" once the calls saved before the index are in it; until then a
                   ZSCAN cursor of ctd:calls, and filters read every CDR as before

The index only ever has too many calls, never too few: a call is added under its values
whenever it is saved or updated (in the same MULTI as its CDR or CRM update) and never
taken out except by the purge, so a call whose tags changed stays under its old ones, and
every call read through the index is checked against the filter (`call_matches`). The
purge removes by start time, whatever the values were. A node running a version without
the index writes calls it does not know of: upgrade every node, then `DEL ctd:cibackfill`
to index them (docs/redis.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from calltrackd.store.codec import (
    CALL_FILTERS,
    FACT_FILTERS,
    decode_call,
    timestamp,
    with_crm,
)
from calltrackd.tracking.model import CallRecord
from calltrackd.tracking.reports import CallFact, call_fact

from .plumbing import RedisPlumbing, _day, _s

log = structlog.get_logger(__name__)

BACKFILL_KEY = "ctd:cibackfill"
_BACKFILL_BATCH = 500  # calls a step reads (within the 1 s socket timeout, loaded)
# remove a key's entries older than ARGV[1]; the key from its tracker's list once empty
_PURGE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], KEYS[1]) end
return 1
"""

Page = list[tuple[str, float]]  # (call id, started_at), newest first


def index_key(tracker: str, name: str, value: str) -> str:
    return f"ctd:ci:{tracker}:{name}:{value}"


def index_keys(record: CallRecord, fact: CallFact | None = None) -> list[str]:
    """The index keys a call (with its CRM fields) is filed under; `fact`: its
    `call_fact`, when the caller has it."""
    fact = fact if fact is not None else call_fact(record)
    keys = [index_key(record.tracker, name, value) for name in FACT_FILTERS
            if (value := getattr(fact, name))]
    if record.carrier:
        keys.append(index_key(record.tracker, "carrier", record.carrier))
    return keys + [index_key(record.tracker, "tag", tag) for tag in record.tags]


def add_to_index(p: Any, record: CallRecord, fact: CallFact | None = None) -> None:
    """File the call under its values (in the caller's pipeline)."""
    keys = index_keys(record, fact)
    if keys:
        ts = timestamp(record.started_at)
        for key in keys:
            p.zadd(key, {record.id: ts})
        p.sadd(f"ctd:cikeys:{record.tracker}", *keys)


class RedisCallIndex(RedisPlumbing):
    """Reading the calls' sorted sets a page at a time; the filter index's backfill and
    purge."""

    _index_ready = False  # this node saw ctd:cibackfill "done"

    async def _calls_in(self, key: str, since: datetime | None, until: datetime | None,
                        top: float | str | None = None, batch: int = 500,
                        offset: int = 0) -> Page:
        """A page of a sorted set of calls in [since, until) (below `top`), newest first."""
        hi: float | str = top if top is not None else (
            f"({timestamp(until)}" if until else "+inf")
        lo: float | str = timestamp(since) if since else "-inf"
        rows = await self._do(self.r.zrevrangebyscore(
            key, hi, lo, start=offset, num=batch, withscores=True))
        return [(_s(m) or "", float(sc)) for m, sc in rows]

    async def _pages(self, keys: Sequence[str], since: datetime | None,
                     until: datetime | None, top: float | str | None = None,
                     first: int = 500, batch: int = 500) -> AsyncGenerator[Page, None]:
        """The calls of several sorted sets (one per tracker) in one order, newest first
        (a call id in two sets comes twice), a page at a time: `first` calls, then twice
        as many each time up to `batch`."""
        buffers: dict[str, deque[tuple[str, float]]] = {k: deque() for k in keys}
        offsets = dict.fromkeys(keys, 0)
        sizes = dict.fromkeys(keys, first)
        more = set(keys)

        async def refill(key: str) -> None:
            rows = await self._calls_in(key, since, until, top, sizes[key], offsets[key])
            offsets[key] += len(rows)
            buffers[key].extend(rows)
            if len(rows) < sizes[key]:
                more.discard(key)
            sizes[key] = min(batch, 2 * sizes[key])

        for key in keys:
            await refill(key)
        last: str | None = None  # the set taken from last: the only one to refill
        want = first
        while True:
            page: Page = []
            while len(page) < want:
                if last is not None and not buffers[last] and last in more:
                    await refill(last)
                live = [k for k in keys if buffers[k]]
                if not live:
                    break
                last = max(live, key=lambda k: (buffers[k][0][1], buffers[k][0][0]))
                page.append(buffers[last].popleft())
            if not page:
                return
            yield page
            want = min(batch, 2 * want)

    async def _filter_keys(self, tracker: str | None,
                           where: Mapping[str, str]) -> list[str] | None:
        """The index keys to read for a filter (per tracker, its smallest), or None when
        the index cannot answer (the backfill is not done, a filter it does not hold)."""
        if not set(where) <= set(CALL_FILTERS):
            return None
        if not self._index_ready:
            if _s(await self._do(self.r.get(BACKFILL_KEY))) != "done":
                return None
            self._index_ready = True
        trackers = [tracker] if tracker else sorted(
            _s(t) or "" for t in await self._do(self.r.smembers("ctd:rtrackers")))
        candidates = [[index_key(t, name, value) for name, value in where.items()]
                      for t in trackers]
        async with self.r.pipeline(transaction=False) as p:
            for keys in candidates:
                for key in keys:
                    p.zcard(key)
            sizes = iter(await self._do(p.execute()))
        out = []
        for keys in candidates:
            size, key = min((int(next(sizes)), key) for key in keys)
            if size:
                out.append(key)
        return out

    async def _backfill(self) -> None:
        await super()._backfill()
        await self._backfill_index()

    async def _backfill_index(self) -> None:
        """File the calls saved before the index: a ZSCAN of ctd:calls, 500 at a time,
        its cursor in ctd:cibackfill (any node may go on where another stopped)."""
        while True:
            state = _s(await self._do(self.r.get(BACKFILL_KEY)))
            if state == "done":
                return
            cursor, members = await self._do(self.r.zscan(
                "ctd:calls", int(state or 0), count=_BACKFILL_BATCH))
            ids = [_s(m) or "" for m, _ in members]
            raws = await self._do(self.r.mget([f"ctd:call:{i}" for i in ids])) if ids else []
            records = []
            for raw in raws:
                try:
                    records.append(decode_call(_s(raw) or ""))
                except (ValueError, KeyError, TypeError) as exc:  # one never stops it
                    log.warning("store.record_unreadable", error=repr(exc)[:200])
            async with self.r.pipeline(transaction=False) as p:
                for rec in records:
                    p.hget(f"ctd:ru:{rec.tracker}:{_day(rec)}", rec.id)
                crm = await self._do(p.execute()) if records else []
            async with self.r.pipeline(transaction=False) as p:
                for rec, stored in zip(records, crm, strict=True):
                    add_to_index(p, with_crm(rec, stored))
                p.set(BACKFILL_KEY, "done" if int(cursor) == 0 else str(cursor))
                await self._do(p.execute())

    async def _purge_index(self, tracker: str, before: float) -> None:
        """Take the tracker's calls that started before `before` out of the index."""
        registry = f"ctd:cikeys:{tracker}"
        keys = sorted(_s(k) or "" for k in await self._do(self.r.smembers(registry)))
        purge = self.r.register_script(_PURGE)
        for i in range(0, len(keys), 500):
            async with self.r.pipeline(transaction=False) as p:
                for key in keys[i:i + 500]:
                    await purge(keys=[key, registry], args=[repr(float(before))], client=p)
                await self._do(p.execute())
