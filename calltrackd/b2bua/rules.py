"""Routing rules: which of a tracker's targets a call rings, for how long, and how.

Pure: configuration, the call's facts and the time in, a `Decision` out; no I/O, no
clock reads. The levels, highest first:

1. `[[trackers.routes]]`, in order: the first rule whose every condition holds wins.
   Conditions (each optional; a list matches if any entry does):
   `did` (dialled numbers), `pool` (pool names: its numbers and its default number),
   `static` (static channels), `channel` (the visitor's channel, or the static
   channel's name), `source` (the pools' `sources` syntax: "google/cpc", "google/*",
   "*/cpc", a channel), `campaign` and `landing_page` (globs with `*`, any case),
   `caller_prefix` ("+7916"), `first_time` (true/false), and the schedule in the
   tracker's `timezone`: `days` ("mon".."sun", ranges "mon-fri", and "holiday": a date of
   the tracker's `holidays` counts as "holiday", not as its weekday) and `hours`
   ("09:00-18:00", start included, end excluded; "22:00-06:00" runs past midnight).
   A rule without conditions always matches.
2. The dialled static number's own `forward`/`ring_timeout`/`hunt`, then its pool's.
3. The tracker's `forward`, `ring_timeout` and `hunt` (`sequential` by default).

A level that leaves a setting out passes it down: a rule that sets only `ring_timeout`
rings the pool's (or the tracker's) targets for that long.

No open relay: `forward` at every level names targets of the tracker's own `forward`,
by `name` (the table form `{uri = "...", name = "sales"}`) or by the exact URI. A
`Decision`'s targets are the tracker's own `ForwardTarget` objects; nothing else can come
out of here.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..tracking.allocator import match_pool, pattern_problem
from ..tracking.model import Attribution, ForwardTarget, Pool, Tracker

__all__ = ["HUNTS", "Decision", "Facts", "Rule", "TrackerRules", "parse_routes", "select"]

Hunt = Literal["sequential", "simultaneous", "round_robin"]
HUNTS: tuple[Hunt, ...] = ("sequential", "simultaneous", "round_robin")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOLIDAY = "holiday"
Duration = Callable[[object, str], float]  # config's parse_duration: raises ValueError


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known of a call when it is routed. Unknown facts are None: a rule that
    asks about them does not match (tracking that failed costs no call, only its rules)."""

    did: str
    caller: str | None = None
    channel: str | None = None  # the visit's channel, or the static channel's name
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    landing_page: str | None = None
    first_time: bool | None = None

    @classmethod
    def of(cls, did: str, caller: str | None, attribution: Attribution | None,
           first_time: bool | None) -> Facts:
        s = attribution.session if attribution else None
        channel = attribution.channel if attribution and attribution.channel else (
            s.channel if s else None)
        return cls(did, caller, channel, s.source if s else None, s.medium if s else None,
                   s.utm_campaign if s else None, s.landing_page if s else None, first_time)


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What one level sets; None passes the setting down to the next level."""

    forward: tuple[int, ...] | None = None  # indexes into the tracker's forward
    ring_timeout: float | None = None
    hunt: Hunt | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    key: str  # trackers[0].routes[2]
    did: frozenset[str] = frozenset()
    pool: frozenset[str] = frozenset()
    static: frozenset[str] = frozenset()
    channel: frozenset[str] = frozenset()
    source: tuple[str, ...] = ()
    campaign: tuple[str, ...] = ()
    landing_page: tuple[str, ...] = ()
    caller_prefix: tuple[str, ...] = ()
    first_time: bool | None = None
    days: frozenset[str] = frozenset()
    hours: tuple[tuple[int, int], ...] = ()  # (start, end) minutes of the day; end may be < start
    settings: RouteSettings = RouteSettings()


@dataclass(frozen=True, slots=True)
class TrackerRules:
    tracker: Tracker
    timezone: dt.tzinfo
    holidays: frozenset[dt.date] = frozenset()
    rules: tuple[Rule, ...] = ()
    pools: dict[str, RouteSettings] | None = None  # by pool name
    static: dict[str, RouteSettings] | None = None  # by static number
    base: RouteSettings = RouteSettings()  # the tracker's hunt (forward and ring_timeout: its own)

    @property
    def needs_attribution(self) -> bool:
        """Whether a rule asks what only the attribution knows (the visitor, first-time
        caller): else routing need not wait for tracking."""
        return any(r.channel or r.source or r.campaign or r.landing_page
                   or r.first_time is not None for r in self.rules)


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str | None  # the winning rule's name; None: no rule matched
    targets: tuple[ForwardTarget, ...]
    ring_timeout: float
    hunt: Hunt
    why: list[str]


# --- select ----------------------------------------------------------------------------


def select(rules: TrackerRules, facts: Facts, now: dt.datetime) -> Decision:
    """The first matching rule's settings over the number's, over the tracker's."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    local = now.astimezone(rules.timezone)
    tracker = rules.tracker
    pool = _pool_of(tracker, facts.did)
    static = next((s for s in tracker.static if s.number == facts.did), None)
    holiday = local.date() in rules.holidays
    day = HOLIDAY if holiday else DAYS[local.weekday()]
    why = [f"call to {facts.did} from {facts.caller or 'anonymous'} at "
           f"{local:%Y-%m-%d %H:%M} {day} ({local.tzname()})"]
    winner: Rule | None = None
    for rule in rules.rules:
        miss = _miss(rule, facts, pool, static.channel if static else None, local, day)
        if miss is None:
            asked = [c for c in _CONDITIONS if getattr(rule, c) not in (None, (), frozenset())]
            why.append(f"rule {rule.name!r} ({rule.key}) matches"
                       + (f": {', '.join(asked)}" if asked else " (no conditions)"))
            winner = rule
            break
        why.append(f"rule {rule.name!r} ({rule.key}) does not match: {miss}")
    levels: list[tuple[str, RouteSettings]] = []
    if winner is not None:
        levels.append((f"rule {winner.name!r}", winner.settings))
    else:
        why.append("no rule matches" if rules.rules else "no rules")
    if static is not None and rules.static and static.number in rules.static:
        levels.append((f"static number {static.number} ({static.channel})",
                       rules.static[static.number]))
    if pool is not None and rules.pools and pool.name in rules.pools:
        levels.append((f"pool {pool.name!r}", rules.pools[pool.name]))
    everything = tuple(range(len(tracker.forward)))
    levels.append(("the tracker", RouteSettings(everything, tracker.ring_timeout,
                                           rules.base.hunt or "sequential")))
    forward, by_f = _first(levels, "forward")
    ring, by_r = _first(levels, "ring_timeout")
    hunt, by_h = _first(levels, "hunt")
    targets = tuple(tracker.forward[i] for i in forward)
    why.append(f"targets {', '.join(t.uri for t in targets)} from {by_f}")
    why.append(f"ring_timeout {ring:g}s from {by_r}; hunt {hunt} from {by_h}")
    return Decision(winner.name if winner else None, targets, ring, hunt, why)


_CONDITIONS = ("did", "pool", "static", "channel", "source", "campaign", "landing_page",
               "caller_prefix", "first_time", "days", "hours")


def _first(levels: list[tuple[str, RouteSettings]], name: str) -> tuple[Any, str]:
    for label, settings in levels:
        value = getattr(settings, name)
        if value is not None:
            return value, label
    raise AssertionError("the tracker level sets everything")


def _pool_of(tracker: Tracker, did: str) -> Pool | None:
    for pool in tracker.pools:
        if did in pool.numbers or did == pool.default_number:
            return pool
    return None


def _miss(rule: Rule, f: Facts, pool: Pool | None, static: str | None,
          local: dt.datetime, day: str) -> str | None:
    """Why the rule does not match (the first condition that fails), or None."""
    if rule.did and f.did not in rule.did:
        return f"did {f.did} is not {_list(rule.did)}"
    if rule.pool and (pool is None or pool.name not in rule.pool):
        return f"pool {pool.name if pool else 'none'} is not {_list(rule.pool)}"
    if rule.static and static not in rule.static:
        return f"static channel {static or 'none'} is not {_list(rule.static)}"
    channel = f.channel or static  # a static number's channel needs no attribution
    if rule.channel and (channel or "").lower() not in rule.channel:
        return f"channel {channel or 'unknown'} is not {_list(rule.channel)}"
    if rule.source and (f.source is None or match_pool(
            [Pool("", rule.source, ())], f.source, f.medium, f.channel) is None):
        return f"source {f.source or 'unknown'}/{f.medium or 'unknown'} is not " \
               f"{_list(rule.source)}"
    if rule.campaign and not _glob(rule.campaign, f.campaign):
        return f"campaign {f.campaign or 'unknown'} is not {_list(rule.campaign)}"
    if rule.landing_page and not _glob(rule.landing_page, f.landing_page):
        return f"landing page {f.landing_page or 'unknown'} is not {_list(rule.landing_page)}"
    if rule.caller_prefix and not (f.caller and f.caller.startswith(rule.caller_prefix)):
        return f"caller {f.caller or 'anonymous'} does not start with " \
               f"{_list(rule.caller_prefix)}"
    if rule.first_time is not None and f.first_time is not rule.first_time:
        known = "unknown" if f.first_time is None else str(f.first_time).lower()
        return f"first_time is {known}, not {str(rule.first_time).lower()}"
    if rule.days and day not in rule.days:
        return f"{day} is not one of {_list(d for d in (*DAYS, HOLIDAY) if d in rule.days)}"
    if rule.hours:
        minute = local.hour * 60 + local.minute
        if not any(_within(minute, start, end) for start, end in rule.hours):
            return f"{local:%H:%M} is outside {', '.join(_span(s, e) for s, e in rule.hours)}"
    return None


def _within(minute: int, start: int, end: int) -> bool:
    return start <= minute < end if start < end else minute >= start or minute < end


def _glob(patterns: tuple[str, ...], value: str | None) -> bool:
    if value is None:
        return False
    text = value.lower()
    return any(re.fullmatch(".*".join(map(re.escape, p.split("*"))), text, re.DOTALL)
               for p in patterns)


def _list(items: Any) -> str:
    return ", ".join(sorted(items)) if isinstance(items, frozenset) else ", ".join(items)


def _span(start: int, end: int) -> str:
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


# --- parse -----------------------------------------------------------------------------

_RULE_KEYS = {"name", "did", "pool", "static", "channel", "source", "campaign",
              "landing_page", "caller_prefix", "first_time", "days", "hours",
              "forward", "ring_timeout", "hunt"}
SETTING_KEYS = ("forward", "ring_timeout", "hunt")  # also in pools and static numbers
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, key: str, message: str) -> None:
        self.lines.append(f"{key}: {message}")

    def strings(self, d: dict[str, Any], key: str, name: str) -> list[tuple[str, str]]:
        """(key of the entry, value) of a string or a list of strings."""
        if name not in d:
            return []
        value = d[name]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            self(f"{key}.{name}", "expected a string or a list of strings")
            return []
        if isinstance(value, str):
            return [(f"{key}.{name}", value)]
        return [(f"{key}.{name}[{i}]", v) for i, v in enumerate(items)]


def parse_routes(raw: dict[str, Any], prefix: str, tracker: Tracker,
                 duration: Duration) -> tuple[TrackerRules, list[str]]:
    """A tracker's table (`raw`, at key `prefix`) → its rules and the problems found,
    one line each naming the key. `tracker` is the tracker parsed from the same table
    (its forward targets, pools and static numbers); `duration` parses durations."""
    p = _Problems()
    names = _target_names(raw, prefix, tracker, p)
    try:
        tz: dt.tzinfo = zoneinfo.ZoneInfo(tracker.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = dt.UTC  # reported by the tracker's own check
    holidays = frozenset(_dates(raw, prefix, p))
    rules = []
    if "routes" in raw:
        tables = raw["routes"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            p(f"{prefix}.routes", "expected [[trackers.routes]] tables")
            tables = []
        for i, d in enumerate(tables):
            rule = _rule(d, f"{prefix}.routes[{i}]", tracker, names, duration, p)
            if rule is not None:
                rules.append(rule)
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                p(f"{rule.key}.name", f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
    pools = {}
    for i, pd in enumerate(_list_of(raw, "pools")):
        if isinstance(pd, dict) and isinstance(pd.get("name"), str):
            pools[pd["name"]] = _settings(pd, f"{prefix}.pools[{i}]", names, duration, p)
    static = {}
    for i, sd in enumerate(_list_of(raw, "static")):
        s = tracker.static[i] if i < len(tracker.static) else None
        if isinstance(sd, dict) and s is not None:
            static[s.number] = _settings(sd, f"{prefix}.static[{i}]", names, duration, p)
    base = _settings(raw, prefix, names, duration, p, hunt_only=True)
    return TrackerRules(tracker, tz, holidays, tuple(rules), pools, static, base), p.lines


def _list_of(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name)
    return value if isinstance(value, list) else []  # else config reports it


def _target_names(raw: dict[str, Any], prefix: str, tracker: Tracker, p: _Problems
                  ) -> dict[str, int]:
    """name or URI → index in the tracker's forward (config dropped the bad entries, so
    the raw list is read only where it is as long as the parsed one)."""
    names: dict[str, int] = {}
    items = raw.get("forward")
    if not isinstance(items, list) or len(items) != len(tracker.forward):
        items = [t.uri for t in tracker.forward]
    for i, (item, target) in enumerate(zip(items, tracker.forward, strict=True)):
        names.setdefault(target.uri, i)
        name = item.get("name") if isinstance(item, dict) else None
        if name is None:
            continue
        key = f"{prefix}.forward[{i}].name"
        if not isinstance(name, str) or not name:
            p(key, "expected a non-empty string")
        elif name in names and names[name] != i:
            p(key, f"target name {name!r} is used twice")
        else:
            names[name] = i
    return names


def _dates(raw: dict[str, Any], prefix: str, p: _Problems) -> list[dt.date]:
    value = raw.get("holidays", [])
    if not isinstance(value, list):
        p(f"{prefix}.holidays", "expected a list of dates such as 2026-12-31")
        return []
    out = []
    for i, item in enumerate(value):
        day: dt.date | None = None
        if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
            day = item  # a TOML date: holidays = [2026-12-31]
        elif isinstance(item, str):
            try:
                day = dt.date.fromisoformat(item)
            except ValueError:
                pass
        if day is None:
            p(f"{prefix}.holidays[{i}]", f"expected a date such as 2026-12-31, got {item!r}")
        else:
            out.append(day)
    return out


def _settings(d: dict[str, Any], key: str, names: dict[str, int], duration: Duration,
              p: _Problems, hunt_only: bool = False) -> RouteSettings:
    forward = ring = None
    if not hunt_only:
        if "forward" in d:
            picked = []
            for entry_key, ref in p.strings(d, key, "forward"):
                if ref in names:
                    picked.append(names[ref])
                else:
                    p(entry_key, f"{ref!r} is not one of this tracker's targets: name a "
                                 f"target of its forward (by name or URI); calls go only "
                                 "where the configuration says (no open relay)")
            forward = tuple(dict.fromkeys(picked)) or None
        if "ring_timeout" in d:
            try:
                ring = duration(d["ring_timeout"], f"{key}.ring_timeout")
            except ValueError as exc:
                p.lines.append(str(exc))
            else:
                if ring <= 0:
                    p(f"{key}.ring_timeout", f"must be more than 0, got {d['ring_timeout']!r}")
                    ring = None
    hunt = d.get("hunt")
    if hunt is not None and hunt not in HUNTS:
        p(f"{key}.hunt", f"expected one of {', '.join(HUNTS)}, got {hunt!r}")
        hunt = None
    return RouteSettings(forward, ring, hunt)


def _rule(d: dict[str, Any], key: str, tracker: Tracker, names: dict[str, int],
          duration: Duration, p: _Problems) -> Rule | None:
    for name in d:
        if name not in _RULE_KEYS:
            p(f"{key}.{name}", "unknown key")
    rule_name = d.get("name", key.rsplit(".", 1)[-1])
    if not isinstance(rule_name, str) or not rule_name:
        p(f"{key}.name", "expected a non-empty string")
        rule_name = key
    numbers = set(tracker.numbers())
    did = set()
    for k, v in p.strings(d, key, "did"):
        if v not in numbers:
            p(k, f"{v} is not a number of this tracker")
        did.add(v)
    pools = {pool.name for pool in tracker.pools}
    pool = _known(p.strings(d, key, "pool"), pools, "pool", p)
    static = _known(p.strings(d, key, "static"), {s.channel for s in tracker.static},
                    "static channel", p)
    source = []
    for k, v in p.strings(d, key, "source"):
        why = pattern_problem(v)
        if why:
            p(k, why)
        source.append(v.strip().lower())
    prefixes = []
    for k, v in p.strings(d, key, "caller_prefix"):
        if not re.fullmatch(r"\+?\d{1,15}", v):
            p(k, f"expected the start of an E.164 number such as \"+7916\", got {v!r}")
        prefixes.append(v)
    first_time = d.get("first_time")
    if first_time is not None and not isinstance(first_time, bool):
        p(f"{key}.first_time", f"expected true or false, got {first_time!r}")
        first_time = None
    return Rule(
        name=rule_name, key=key, did=frozenset(did), pool=pool, static=static,
        channel=frozenset(v.lower() for _, v in p.strings(d, key, "channel")),
        source=tuple(source),
        campaign=tuple(v.lower() for _, v in p.strings(d, key, "campaign")),
        landing_page=tuple(v.lower() for _, v in p.strings(d, key, "landing_page")),
        caller_prefix=tuple(prefixes), first_time=first_time,
        days=_days(p.strings(d, key, "days"), p),
        hours=_hours(p.strings(d, key, "hours"), p),
        settings=_settings(d, key, names, duration, p),
    )


def _known(items: Sequence[tuple[str, str]], known: set[str], what: str, p: _Problems
           ) -> frozenset[str]:
    for k, v in items:
        if v not in known:
            p(k, f"no {what} {v!r} in this tracker ({', '.join(sorted(known)) or 'none'})")
    return frozenset(v for _, v in items)


def _day(text: str) -> str | None:
    t = text.strip().lower()
    if t in (HOLIDAY, "holidays"):
        return HOLIDAY
    if t in _FULL_DAYS:
        return DAYS[_FULL_DAYS.index(t)]
    return t if t in DAYS else None


def _days(items: Sequence[tuple[str, str]], p: _Problems) -> frozenset[str]:
    out: set[str] = set()
    for k, v in items:
        first, dash, last = v.partition("-")
        a, b = _day(first), _day(last) if dash else None
        if a is None or (dash and (b is None or HOLIDAY in (a, b))):
            p(k, f"expected a day (mon..sun, holiday) or a range such as \"mon-fri\", "
                 f"got {v!r}")
            continue
        if b is None:
            out.add(a)
            continue
        i, j = DAYS.index(a), DAYS.index(b)
        out.update(DAYS[(i + n) % 7] for n in range((j - i) % 7 + 1))
    return frozenset(out)


def _hours(items: Sequence[tuple[str, str]], p: _Problems) -> tuple[tuple[int, int], ...]:
    out = []
    for k, v in items:
        m = _HOURS.match(v.strip())
        bad = m is None
        if m is not None:
            h1, m1, h2, m2 = (int(x) for x in m.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            bad = h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start == end
        if bad:
            p(k, f"expected hours such as \"09:00-18:00\" (or \"22:00-06:00\" past "
                 f"midnight; start and end differ), got {v!r}")
            continue
        out.append((start, end))
    return tuple(out)
