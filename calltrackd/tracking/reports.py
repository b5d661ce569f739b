"""Reports (`GET /v1/reports`): calls, visitors, spend and revenue by any of the
dimensions below. Pure: no I/O, no clock.

Three kinds of facts feed a report, and each store keeps them so that a report over 90
days of a million calls is a scan of narrow rows, not of CDRs:
- `CallFact`: one per call, derived from the CDR (`call_fact`) and its CRM update
  (tags, lead_status, value from `PATCH /v1/calls/{id}`);
- visit cells: visitor sessions counted at write time per tracker, hour and the visit's
  traffic source (`visit_cell`), with how many of them got a pool number;
- spend rows: ad spend per tracker, day, source, medium and campaign (`PUT /v1/spend`).

A store answers a `ReportQuery` with `CallGroup`s (SQL on SQLite, `aggregate_calls` in
Python on Redis: both yield the same integers, sums are in milliseconds and cents) and
`VisitGroup`s; `build_rows` joins them with spend into the answer's rows.

Days, hours and weekdays are local to the query's `zone` (the tracker's `timezone`,
DST-correct): a call's local day and hour come from its timestamp and the zone's UTC
offsets over the period (`zone_segments`); the period itself is given in unix seconds
(the HTTP layer makes `since`/`until` days local midnights). Visit cells are counted per
UTC hour and shown at that hour's local time (exact for zones whose offsets are whole
hours). Money is kept in cents (integers) so that sums are exact on every store.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession, is_anonymous

DIMENSIONS: tuple[str, ...] = (
    "channel", "source", "medium", "campaign", "term", "content", "landing_page",
    "referrer_domain", "static_channel", "pool", "day", "hour", "weekday", "first_time",
    "tag",
)
# dimensions a visit has (visitors are counted per visit; the rest are the call's own)
VISIT_DIMENSIONS: tuple[str, ...] = (
    "channel", "source", "medium", "campaign", "term", "content", "landing_page",
    "referrer_domain", "day", "hour", "weekday",
)
# dimensions a spend row has (weekday follows from its day)
SPEND_DIMENSIONS: frozenset[str] = frozenset({"source", "medium", "campaign", "day", "weekday"})

LEAD_STATUSES: tuple[str, ...] = ("new", "qualified", "won", "lost", "spam")
MAX_TAGS = 20
MAX_TAG_LENGTH = 64
DAY = 86400


# --- where a call's and a visit's traffic source come from -----------------------------


def _low(value: str | None) -> str | None:
    value = value.strip().lower() if value else None
    return value or None


def session_traffic(session: VisitorSession | None) -> tuple[str | None, str | None, str | None]:
    """(channel, source, medium) of a visit.

    The classified fields (`channel`, `source`, `medium` of the session) when the session
    has them; else source/medium from the UTM tags and no channel."""
    if session is None:
        return None, None, None
    channel = getattr(session, "channel", None)
    source = getattr(session, "source", None) or session.utm_source
    medium = getattr(session, "medium", None) or session.utm_medium
    return _low(channel), _low(source), _low(medium)


def call_traffic(att: Attribution | None) -> tuple[str | None, str | None, str | None]:
    """(channel, source, medium) of a call: the attribution's own top-level fields when
    it has them; else the session's (`session_traffic`), and for static calls the
    static channel's name as the channel."""
    if att is None:
        return None, None, None
    s_channel, s_source, s_medium = session_traffic(att.session)
    channel = getattr(att, "channel", None) or s_channel
    source = _low(getattr(att, "source", None)) or s_source
    medium = _low(getattr(att, "medium", None)) or s_medium
    return channel, source, medium


def landing_page(url: str | None) -> str | None:
    """The landing URL without its query and fragment (those carry the click's tags)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "http://[::1/x": kept as written, without its query
        parts = None
    if parts is None or not parts.netloc:
        return url.strip().split("?", 1)[0].split("#", 1)[0] or None
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path or '/'}"


def referrer_domain(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:  # not a URL one can read: no domain
        return None
    host = host.removeprefix("www.")
    return host or None


# --- facts ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallFact:
    """What a report needs of one call, all values as the report shows them."""

    id: str
    tracker: str
    ts: float  # started_at, unix seconds
    did: str
    caller: str | None  # None: anonymous
    channel: str | None
    source: str | None
    medium: str | None
    campaign: str | None
    term: str | None
    content: str | None
    landing_page: str | None
    referrer_domain: str | None
    static_channel: str | None
    first_time: bool | None
    outcome: str | None
    qualified: bool | None
    ring_ms: int | None
    talk_ms: int | None
    # from the CRM update
    tags: tuple[str, ...] = ()
    value_cents: int | None = None

    @property
    def day(self) -> int:
        return int(self.ts // DAY)

    @property
    def hour(self) -> int:
        return int(self.ts % DAY // 3600)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def cents(amount: float | None) -> int | None:
    return None if amount is None else round(amount * 100)


def _clean(value: str | None) -> str | None:
    """A text value as reports keep it: no separator characters, None for empty."""
    if not value:
        return None
    return value.replace("\x1f", " ").replace("\x1e", " ").strip() or None


def call_fact(record: CallRecord) -> CallFact:
    att = record.attribution
    session = att.session if att else None
    channel, source, medium = call_traffic(att)
    return CallFact(
        id=record.id, tracker=record.tracker, ts=record.started_at.timestamp(),
        did=record.did,
        caller=None if is_anonymous(record.caller) else _clean(record.caller),
        channel=_clean(channel), source=_clean(source), medium=_clean(medium),
        campaign=_clean(session.utm_campaign) if session else None,
        term=_clean(session.utm_term) if session else None,
        content=_clean(session.utm_content) if session else None,
        landing_page=_clean(landing_page(session.landing_page)) if session else None,
        referrer_domain=_clean(referrer_domain(session.referrer)) if session else None,
        static_channel=_clean(att.channel) if att is not None and att.kind == "static"
        else None,
        first_time=record.first_time_caller, outcome=record.outcome,
        qualified=record.qualified, ring_ms=_ms(record.ring_seconds),
        talk_ms=_ms(record.talk_seconds), tags=record.tags,
        value_cents=cents(record.value),
    )


# --- facts as text (the Redis store keeps them so) -------------------------------------
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


# the visit cell: (hour number since the epoch, channel, source, medium, campaign, term,
# content, landing_page, referrer_domain); None stored as ""
VisitCell = tuple[int, str, str, str, str, str, str, str, str]


def visit_cell(session: VisitorSession) -> VisitCell:
    channel, source, medium = session_traffic(session)
    return (
        int(session.first_seen // 3600), _clean(channel) or "", _clean(source) or "",
        _clean(medium) or "", _clean(session.utm_campaign) or "",
        _clean(session.utm_term) or "", _clean(session.utm_content) or "",
        _clean(landing_page(session.landing_page)) or "",
        _clean(referrer_domain(session.referrer)) or "",
    )


# --- the query -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """`group_by` dimensions, filters (dimension → accepted values, typed as the report
    shows them: str, int for day number/hour/weekday, bool for first_time), the tracker
    and the period [since, until) in unix seconds. `pools` maps each pool number to its
    pool's name (from the configuration: a number moved to another pool counts there)."""

    group_by: tuple[str, ...]
    filters: Mapping[str, frozenset[Any]] = field(default_factory=dict)
    tracker: str | None = None
    since: float = 0.0
    until: float = float("inf")
    pools: Mapping[str, str] = field(default_factory=dict)
    zone: str = "UTC"  # IANA name: the days, hours and weekdays of the report

    def segments(self) -> Segments:
        """The zone's UTC offsets over the period (`zone_segments`)."""
        return zone_segments(self.zone, self.since, self.until)

    def local_time(self) -> bool:
        """Does the query need local (not UTC) days, hours or weekdays?"""
        return self.segments() != _UTC_SEGMENTS and any(
            d in TIME_DIMENSIONS for d in (*self.group_by, *self.filters))

    def visits_apply(self) -> bool:
        """Visitors can be counted for this query (no call-only dimension in it)."""
        return all(d in VISIT_DIMENSIONS for d in (*self.group_by, *self.filters))

    def spend_applies(self) -> bool:
        return all(d in SPEND_DIMENSIONS for d in (*self.group_by, *self.filters))


# --- local time: a zone's UTC offsets over a period ------------------------------------
# (starts, offsets): the offset in seconds is offsets[i] from starts[i] (starts[0] is
# -inf) until starts[i + 1]. A period of 90 days has at most a few transitions.

Segments = tuple[tuple[float, ...], tuple[int, ...]]
TIME_DIMENSIONS = frozenset({"day", "hour", "weekday"})
_UTC_SEGMENTS: Segments = ((float("-inf"),), (0,))
_SEARCH_LIMIT = 2**31  # periods open to the future are searched up to 2038


def _offset(zone: ZoneInfo, ts: float) -> int:
    off = datetime.fromtimestamp(ts, zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


@functools.lru_cache(maxsize=256)
def zone_segments(zone: str, since: float, until: float) -> Segments:
    """The UTC offsets of `zone` over [since, until): found by a walk a day at a time and
    a bisection to the second at each change (offsets change at most twice a year)."""
    if zone in ("UTC", "Etc/UTC"):
        return _UTC_SEGMENTS
    tz = ZoneInfo(zone)
    lo = max(since, 0.0)
    hi = min(until, float(_SEARCH_LIMIT))
    starts, offsets = [float("-inf")], [_offset(tz, lo)]
    t = lo
    while t < hi:
        nxt = min(t + DAY, hi)
        off = _offset(tz, nxt)
        if off != offsets[-1]:
            a, b = t, nxt  # offset(a) is the old one, offset(b) the new
            while b - a > 1:
                mid = (a + b) // 2
                if _offset(tz, mid) == off:
                    b = mid
                else:
                    a = mid
            starts.append(float(b))
            offsets.append(off)
        t = nxt
    return tuple(starts), tuple(offsets)


def offset_at(segs: Segments, ts: float) -> int:
    starts, offsets = segs
    if len(starts) == 1:
        return offsets[0]
    return offsets[bisect.bisect_right(starts, ts) - 1]


def local_day_hour(segs: Segments, ts: float) -> tuple[int, int]:
    """(day number, hour) of a unix time in the local time of the segments."""
    local = ts + offset_at(segs, ts)
    return int(local // DAY), int(local % DAY // 3600)


def local_ts_sql(column: str, segs: Segments) -> str:
    """SQL for the local time (unix seconds shifted by the offset) of a unix-seconds
    column; the numbers are the zone's own, written as literals."""
    starts, offsets = segs
    if len(starts) == 1:
        return f"({column} + {offsets[0]})"
    cases = " ".join(f"WHEN {column} < {starts[i + 1]!r} THEN {offsets[i]}"
                     for i in range(len(starts) - 1))
    return f"({column} + CASE {cases} ELSE {offsets[-1]} END)"


def time_sql(dim: str, query: ReportQuery, floor: Callable[[str], str],
             column: str = "r.ts") -> str | None:
    """SQL for a local day number, hour or weekday of the query's zone from a
    unix-seconds column (`floor` writes the dialect's integer floor of an expression);
    None when the query's times are UTC (the store's own day and hour columns do)."""
    if dim not in TIME_DIMENSIONS or not query.local_time():
        return None
    local = local_ts_sql(column, query.segments())
    day = floor(f"{local} / {DAY}")
    if dim == "hour":
        return f"({floor(f'{local} / 3600')} % 24)"
    return day if dim == "day" else f"(({day} + 3) % 7 + 1)"


def local_midnight(day: date, zone: str) -> float:
    """Unix seconds of the start of a local day (DST-correct)."""
    tz = UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone)
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def local_date(ts: float, zone: str) -> date:
    tz = UTC if zone in ("UTC", "Etc/UTC") else ZoneInfo(zone)
    return datetime.fromtimestamp(ts, tz).date()


def weekday(day_number: int) -> int:
    """ISO weekday (Monday 1 … Sunday 7) of a day number since 1970-01-01 (a Thursday)."""
    return (day_number + 3) % 7 + 1


def day_number(text: str) -> int:
    return date.fromisoformat(text).toordinal() - date(1970, 1, 1).toordinal()


def day_text(number: int) -> str:
    return date.fromordinal(number + date(1970, 1, 1).toordinal()).isoformat()


def _fact_values(fact: CallFact, dim: str, pools: Mapping[str, str],
                 segs: Segments = _UTC_SEGMENTS) -> tuple[Any, ...]:
    """The fact's value(s) of a dimension: one, or one per tag (None without tags)."""
    if dim == "tag":
        return fact.tags or (None,)
    if dim in TIME_DIMENSIONS:
        day, hour = local_day_hour(segs, fact.ts)
        return (hour,) if dim == "hour" else (day,) if dim == "day" else (weekday(day),)
    if dim == "pool":
        return (pools.get(fact.did),)
    return (getattr(fact, dim),)


@dataclass(slots=True)
class CallGroup:
    """Calls of one report key; durations in ms, value in cents."""

    key: tuple[Any, ...]
    calls: int = 0
    answered: int = 0
    missed: int = 0
    qualified: int = 0
    first_time: int = 0
    unique_callers: int = 0
    ring_ms: int = 0
    ring_n: int = 0
    talk_ms: int = 0
    talk_n: int = 0
    value_cents: int = 0


def _keys(fact: CallFact, query: ReportQuery) -> list[tuple[Any, ...]]:
    keys: list[tuple[Any, ...]] = [()]
    segs = query.segments()
    for dim in query.group_by:
        values = _fact_values(fact, dim, query.pools, segs)
        if dim == "tag" and "tag" in query.filters:  # grouped by tag, only those asked for
            values = tuple(v for v in values if v in query.filters["tag"])
        keys = [(*k, v) for k in keys for v in values]
    return keys


def _passes(fact: CallFact, query: ReportQuery) -> bool:
    if query.tracker is not None and fact.tracker != query.tracker:
        return False
    if not query.since <= fact.ts < query.until:
        return False
    segs = query.segments()
    for dim, accepted in query.filters.items():
        if not any(v in accepted for v in _fact_values(fact, dim, query.pools, segs)):
            return False
    return True


def aggregate_calls(facts: Iterable[CallFact], query: ReportQuery) -> list[CallGroup]:
    """The reference aggregation (the Redis store uses it; SQLite does the same in SQL).

    A call with several tags counts once under each tag when grouped by tag (under each
    tag asked for, when filtered by tag too); a call without tags has the tag None.
    Outcomes: answered, or missed once ended otherwise."""
    groups: dict[tuple[Any, ...], CallGroup] = {}
    callers: dict[tuple[Any, ...], set[str]] = {}
    for fact in facts:
        if not _passes(fact, query):
            continue
        for key in _keys(fact, query):
            g = groups.get(key)
            if g is None:
                g = groups[key] = CallGroup(key)
                callers[key] = set()
            g.calls += 1
            if fact.outcome == "answered":
                g.answered += 1
            elif fact.outcome is not None:
                g.missed += 1
            g.qualified += fact.qualified is True
            g.first_time += fact.first_time is True
            if fact.caller is not None:
                callers[key].add(fact.caller)
            if fact.ring_ms is not None:
                g.ring_ms += fact.ring_ms
                g.ring_n += 1
            if fact.talk_ms is not None:
                g.talk_ms += fact.talk_ms
                g.talk_n += 1
            g.value_cents += fact.value_cents or 0
    for key, g in groups.items():
        g.unique_callers = len(callers[key])
    return list(groups.values())


@dataclass(slots=True)
class VisitGroup:
    key: tuple[Any, ...]
    visitors: int = 0
    dynamic: int = 0


_CELL_INDEX = {"channel": 1, "source": 2, "medium": 3, "campaign": 4, "term": 5,
               "content": 6, "landing_page": 7, "referrer_domain": 8}


def cell_value(cell: Sequence[Any], dim: str, segs: Segments = _UTC_SEGMENTS) -> Any:
    """A visit cell's value of a (visit) dimension, typed as the report shows it; a
    cell's time is its UTC hour's start in local time."""
    if dim in TIME_DIMENSIONS:
        day, hour = local_day_hour(segs, int(cell[0]) * 3600)
        if dim == "hour":
            return hour
        return day if dim == "day" else weekday(day)
    return cell[_CELL_INDEX[dim]] or None


def aggregate_visits(cells: Iterable[tuple[Sequence[Any], int, int]],
                     query: ReportQuery) -> list[VisitGroup]:
    """Visit cells (cell, visitors, dynamic) of the query's tracker and hours → groups.
    The period applies by hour: a visit counts when its first hour is in [since, until)."""
    lo, hi = query.since // 3600, query.until / 3600
    segs = query.segments()
    groups: dict[tuple[Any, ...], VisitGroup] = {}
    for cell, visitors, dynamic in cells:
        if not lo <= int(cell[0]) < hi:
            continue
        if any(cell_value(cell, d, segs) not in ok for d, ok in query.filters.items()):
            continue
        key = tuple(cell_value(cell, d, segs) for d in query.group_by)
        g = groups.get(key)
        if g is None:
            g = groups[key] = VisitGroup(key)
        g.visitors += visitors
        g.dynamic += dynamic
    return list(groups.values())


# --- spend -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Ad spend of one tracker, day and source/medium/campaign ("" where not given)."""

    tracker: str
    day: str  # YYYY-MM-DD
    source: str
    medium: str
    campaign: str
    amount_cents: int
    currency: str

    def key(self) -> tuple[str, str, str, str, str]:
        return (self.tracker, self.day, self.source, self.medium, self.campaign)

    def to_json(self) -> dict[str, Any]:
        return {"tracker": self.tracker, "day": self.day, "source": self.source or None,
                "medium": self.medium or None, "campaign": self.campaign or None,
                "amount": self.amount_cents / 100, "currency": self.currency}


def spend_value(row: SpendRow, dim: str) -> Any:
    if dim == "day":
        return day_number(row.day)
    if dim == "weekday":
        return weekday(day_number(row.day))
    value: str = getattr(row, dim)
    return value or None


def aggregate_spend(rows: Iterable[SpendRow], query: ReportQuery
                    ) -> dict[tuple[Any, ...], tuple[int, frozenset[str]]]:
    """Spend by report key: cents and the currencies summed. Only for queries whose
    dimensions spend has (`spend_applies`); a day's spend counts when the day (a local
    day of the query's zone) starts in [since, until)."""
    out: dict[tuple[Any, ...], tuple[int, frozenset[str]]] = {}
    if not query.spend_applies():
        return out
    for row in rows:
        if query.tracker is not None and row.tracker != query.tracker:
            continue
        if not query.since <= local_midnight(date.fromisoformat(row.day), query.zone) \
                < query.until:
            continue
        if any(spend_value(row, d) not in ok for d, ok in query.filters.items()):
            continue
        key = tuple(spend_value(row, d) for d in query.group_by)
        total, currencies = out.get(key, (0, frozenset()))
        out[key] = (total + row.amount_cents, currencies | {row.currency})
    return out


def spend_query(query: ReportQuery) -> ReportQuery | None:
    """For a query whose rows cannot carry spend (grouped by term, say): the coarser
    query on its spend dimensions (campaign of campaign,term) whose rows can, or None.
    Not for tags (a call counts under each of its tags) or filters spend does not have."""
    if query.spend_applies() or "tag" in query.group_by:
        return None
    dims = tuple(d for d in query.group_by if d in SPEND_DIMENSIONS)
    if not dims or not all(d in SPEND_DIMENSIONS for d in query.filters):
        return None
    return replace(query, group_by=dims)


def rollup(query: ReportQuery, coarse: ReportQuery, calls: Sequence[CallGroup],
           visits: Sequence[VisitGroup]) -> tuple[list[CallGroup], list[VisitGroup]]:
    """The groups of `query` added up to the keys of `coarse` (its dimensions a subset).
    unique_callers is not additive: -1 marks it unknown."""
    pick = [query.group_by.index(d) for d in coarse.group_by]
    out: dict[tuple[Any, ...], CallGroup] = {}
    for g in calls:
        key = tuple(g.key[i] for i in pick)
        total = out.setdefault(key, CallGroup(key, unique_callers=-1))
        for name in ("calls", "answered", "missed", "qualified", "first_time", "ring_ms",
                     "ring_n", "talk_ms", "talk_n", "value_cents"):
            setattr(total, name, getattr(total, name) + getattr(g, name))
    vout: dict[tuple[Any, ...], VisitGroup] = {}
    for v in visits:
        key = tuple(v.key[i] for i in pick)
        vt = vout.setdefault(key, VisitGroup(key))
        vt.visitors += v.visitors
        vt.dynamic += v.dynamic
    return list(out.values()), list(vout.values())


# --- the answer ------------------------------------------------------------------------


def _show(dim: str, value: Any) -> Any:
    return day_text(value) if dim == "day" and value is not None else value


def _ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def _sort_key(value: Any) -> tuple[int, str]:
    return (1, "") if value is None else (0, f"{value:>12}" if isinstance(value, int)
                                          else str(value))


def build_rows(query: ReportQuery, calls: Sequence[CallGroup], visits: Sequence[VisitGroup],
               spend: Mapping[tuple[Any, ...], tuple[int, frozenset[str]]]
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of the answer (every key that has calls, visitors or spend) and totals.

    - visitors, visitors_dynamic and coverage are null when the query uses a dimension
      a visit does not have (static_channel, pool, first_time, tag);
    - spend, cpl and roi are null when it uses one spend does not have (anything but
      source, medium, campaign, day, weekday), and spend is null where currencies mix;
    - cpl = spend ÷ qualified calls; roi = (revenue - spend) ÷ spend; revenue is the sum
      of the calls' `value`."""
    with_visits, with_spend = query.visits_apply(), query.spend_applies()
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}

    def row(key: tuple[Any, ...]) -> dict[str, Any]:
        r = by_key.get(key)
        if r is None:
            r = by_key[key] = {"g": CallGroup(key), "v": VisitGroup(key), "s": None}
        return r

    for g in calls:
        row(g.key)["g"] = g
    if with_visits:
        for v in visits:
            row(v.key)["v"] = v
    if with_spend:
        for key, s in spend.items():
            row(key)["s"] = s
    total_g, total_v = CallGroup(()), VisitGroup(())
    total_s: tuple[int, frozenset[str]] | None = (0, frozenset()) if with_spend else None
    out = []
    for key in sorted(by_key, key=lambda k: tuple(_sort_key(v) for v in k)):
        r = by_key[key]
        g, v, s = r["g"], r["v"], r["s"]
        for name in ("calls", "answered", "missed", "qualified", "first_time", "ring_ms",
                     "ring_n", "talk_ms", "talk_n", "value_cents"):
            setattr(total_g, name, getattr(total_g, name) + getattr(g, name))
        total_v.visitors += v.visitors
        total_v.dynamic += v.dynamic
        if total_s is not None and s is not None:
            total_s = (total_s[0] + s[0], total_s[1] | s[1])
        if with_spend and s is None:
            s = (0, frozenset())
        out.append(_row(query, key, g, v if with_visits else None, s, with_spend))
    totals = _row(query, None, total_g, total_v if with_visits else None, total_s, with_spend)
    totals.pop("key")
    totals["unique_callers"] = None  # not additive over rows: see each row
    return out, totals


def _row(query: ReportQuery, key: tuple[Any, ...] | None, g: CallGroup, v: VisitGroup | None,
         s: tuple[int, frozenset[str]] | None, with_spend: bool) -> dict[str, Any]:
    spend: float | None = None
    currency: str | None = None
    if with_spend and s is not None and len(s[1]) <= 1:
        spend = s[0] / 100
        currency = next(iter(s[1]), None)
    revenue = g.value_cents / 100
    return {
        "key": {d: _show(d, k) for d, k in zip(query.group_by, key, strict=True)}
        if key is not None else None,
        "visitors": v.visitors if v else None,
        "visitors_dynamic": v.dynamic if v else None,
        "coverage": _ratio(v.dynamic, v.visitors) if v else None,
        "calls": g.calls,
        "answered": g.answered,
        "missed": g.missed,
        "qualified": g.qualified,
        "first_time": g.first_time,
        "unique_callers": g.unique_callers if g.unique_callers >= 0 else None,
        "avg_ring_seconds": _ratio(g.ring_ms, g.ring_n * 1000, 2),
        "avg_talk_seconds": _ratio(g.talk_ms, g.talk_n * 1000, 2),
        "spend": spend,
        "currency": currency,
        "cpl": round(spend / g.qualified, 2) if spend is not None and g.qualified else None,
        "revenue": revenue,
        "roi": round((revenue - spend) / spend, 4) if spend else None,
    }
