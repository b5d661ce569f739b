"""Report facts as text, as the Redis store keeps them, and `aggregate_encoded`: the
groups of `groups.aggregate_calls` straight from that text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .facts import CallFact
from .groups import CallGroup
from .localtime import local_day_hour, weekday
from .query import ReportQuery

# One line of fields separated by US (\x1f), "" for None; day, hour and weekday are
# written out so that filters compare bytes. The CRM part (tags, value) is kept apart.

SEP = "\x1f"
FACT_FIELDS: tuple[str, ...] = (
    "id", "ts", "day", "hour", "weekday", "did", "caller", "channel", "source", "medium",
    "campaign", "term", "content", "landing_page", "referrer_domain", "static_channel",
    "first_time", "outcome", "qualified", "ring_ms", "talk_ms",
)
_FIELD = {name: i for i, name in enumerate(FACT_FIELDS)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def encode_fact(f: CallFact) -> str:
    return SEP.join((f.id, repr(f.ts), str(f.day), str(f.hour), str(weekday(f.day)), f.did,
                     *map(_text, (f.caller, f.channel, f.source, f.medium, f.campaign,
                                  f.term, f.content, f.landing_page, f.referrer_domain,
                                  f.static_channel, f.first_time, f.outcome, f.qualified,
                                  f.ring_ms, f.talk_ms))))


def encode_crm(tags: Sequence[str], value_cents: int | None) -> str:
    return SEP.join((_text(value_cents), *tags))


def _typed(dim: str, raw: bytes) -> Any:
    if not raw:
        return None
    if dim in ("day", "hour", "weekday"):
        return int(raw)
    if dim == "first_time":
        return raw == b"1"
    return raw.decode()


def _raw(dim: str, value: Any) -> bytes:
    return _text(value).encode()


def aggregate_encoded(facts: Iterable[bytes], crm: Mapping[bytes, bytes],
                      query: ReportQuery) -> list[CallGroup]:
    """`aggregate_calls` over facts as `encode_fact` wrote them (of the query's tracker)
    and their CRM parts by call id (`encode_crm`): the same groups, without building a
    CallFact per call (1M facts are the budget of a report)."""
    lo, hi = query.since, query.until
    segs = query.segments() if query.local_time() else None
    pools = {n.encode(): p.encode() for n, p in query.pools.items()}
    plain = [(_FIELD[d], {_raw(d, v) for v in ok}) for d, ok in query.filters.items()
             if d not in ("tag", "pool")]
    tag_ok = ({v.encode() for v in query.filters["tag"]}
              if "tag" in query.filters else None)
    pool_ok = ({v.encode() for v in query.filters["pool"]}
               if "pool" in query.filters else None)
    by_tag = "tag" in query.group_by
    idx = [-1 if d == "tag" else -2 if d == "pool" else _FIELD[d] for d in query.group_by]
    simple = all(i >= 0 for i in idx)
    groups: dict[tuple[bytes, ...], list[int]] = {}
    callers: dict[tuple[bytes, ...], set[bytes]] = {}
    none = (b"",)
    for raw in facts:
        p = raw.split(b"\x1f")
        ts = float(p[1])
        if ts < lo or ts >= hi:
            continue
        if segs is not None:  # the local day, hour and weekday in place of UTC's
            day, hour = local_day_hour(segs, ts)
            p[2], p[3], p[4] = b"%d" % day, b"%d" % hour, b"%d" % weekday(day)
        if plain and not all(p[i] in ok for i, ok in plain):
            continue
        c = crm.get(p[0]) if crm else None
        tags = c.split(b"\x1f")[1:] if c else []
        if tag_ok is not None and not tag_ok.intersection(tags):
            continue
        tag_keys = [t for t in tags if t in tag_ok] if tag_ok is not None else tags
        if pool_ok is not None and pools.get(p[5]) not in pool_ok:
            continue
        if simple:
            keys = [tuple([p[i] for i in idx])]
        else:
            keys = [()]
            for i in idx:
                vals = (tag_keys or none) if i == -1 else (pools.get(p[5], b""),) if i == -2 \
                    else (p[i],)
                keys = [(*k, v) for k in keys for v in vals]
            if not by_tag:
                keys = keys[:1]
        value = int(c.split(b"\x1f", 1)[0] or 0) if c else 0
        for key in keys:
            g = groups.get(key)
            if g is None:
                g = groups[key] = [0] * 10
                callers[key] = set()
            g[0] += 1
            outcome = p[17]
            if outcome == b"answered":
                g[1] += 1
            elif outcome:
                g[2] += 1
            if p[18] == b"1":
                g[3] += 1
            if p[16] == b"1":
                g[4] += 1
            if p[6]:
                callers[key].add(p[6])
            if p[19]:
                g[5] += int(p[19])
                g[6] += 1
            if p[20]:
                g[7] += int(p[20])
                g[8] += 1
            g[9] += value
    out = []
    for key, g in groups.items():
        typed = tuple(_typed(d, v) for d, v in zip(query.group_by, key, strict=True))
        out.append(CallGroup(typed, g[0], g[1], g[2], g[3], g[4], len(callers[key]), g[5],
                             g[6], g[7], g[8], g[9]))
    return out
