"""Who a call belongs to: a pure function of the dialled number and what is known of it.

Rules (issue 3, point 3), in order:

1. the number is held by a session now → `dynamic`, with that session;
2. a static number → `static`, with its channel;
3. the tracker's default number → `default`;
4. a pool number nobody holds now → `expired`, with the session whose hold ended last,
   provided nobody held the number since and that hold ended within
   `attribution_grace`;
5. otherwise `none`.

Holds are judged as of `now`, so a call attributed late (say from a queued CDR) still
goes to whoever held the number when it rang.
"""

from __future__ import annotations

from collections.abc import Mapping

from calltrackd.tracking.model import (
    Attribution,
    AttributionKind,
    Hold,
    Tracker,
    VisitorSession,
)

_ANONYMOUS = frozenset({"", "anonymous", "unknown", "unavailable", "restricted", "private"})


_Roles = tuple[dict[str, str], frozenset[str]]
_roles_cache: dict[int, tuple[Tracker, _Roles]] = {}


def _roles(tracker: Tracker) -> _Roles:
    """(static number → channel, pool numbers) of a tracker; trackers are frozen.
    Cached by identity, not by hash: hashing a tracker hashes its every pool number."""
    hit = _roles_cache.get(id(tracker))
    if hit is not None and hit[0] is tracker:
        return hit[1]
    static = {s.number: s.channel for s in tracker.static}
    pooled = frozenset(n for pool in tracker.pools for n in pool.numbers)
    if len(_roles_cache) >= 1024:  # trackers replaced by reloads
        _roles_cache.clear()
    _roles_cache[id(tracker)] = (tracker, (static, pooled))
    return static, pooled


def is_pool_number(tracker: Tracker, number: str) -> bool:
    return number in _roles(tracker)[1]


def is_anonymous(caller: str) -> bool:
    """A caller id that says nothing about who called (withheld, unknown)."""
    return caller.strip().lower() in _ANONYMOUS


def qualified(talk_seconds: float | None, min_seconds: float) -> bool:
    """A target call: talk time reached the tracker's `target_call_min_seconds`."""
    return talk_seconds is not None and talk_seconds >= min_seconds


def _held_at(hold: Hold, now: float) -> bool:
    return hold.started_at <= now < hold.until


def attribute(
    did: str,
    caller: str,
    now: float,
    tracker: Tracker,
    current: Hold | None,
    last: Hold | None,
    sessions: Mapping[str, VisitorSession],
    called_before: bool | None,
) -> tuple[Attribution, bool | None]:
    """The attribution of a call to `did` at `now`, and whether it is a first-time caller.

    `current` and `last` are the number's current and last holder as the store knows
    them (a current hold may already have lapsed); `sessions` holds their visitor
    sessions by id. `called_before` is the caller history (None: unknown, e.g. a withheld
    caller id or the store did not answer); first_time_caller is then None too.
    """
    first_time = None if called_before is None or is_anonymous(caller) else not called_before
    holds = [h for h in (current, last) if h is not None and h.number == did]
    for hold in holds:
        if _held_at(hold, now):
            return _with_session("dynamic", hold, sessions), first_time
    static, pooled = _roles(tracker)
    channel = static.get(did)
    if channel is not None:
        return Attribution("static", channel=channel), first_time
    if did == tracker.default_number:
        return Attribution("default"), first_time
    if did in pooled:
        ended = [h for h in holds if h.until <= now]
        if ended:
            latest = max(ended, key=lambda h: h.until)
            held_since = any(
                h is not latest and latest.until < h.started_at <= now for h in holds
            )
            if not held_since and now - latest.until <= tracker.attribution_grace:
                return _with_session("expired", latest, sessions), first_time
    return Attribution("none"), first_time


def _with_session(
    kind: AttributionKind, hold: Hold, sessions: Mapping[str, VisitorSession]
) -> Attribution:
    session = sessions.get(hold.session_id)
    if session is None:
        # The number was held, but the session record is gone (pruned or lost by the
        # store): keep the kind, say what is missing rather than guess.
        return Attribution(kind, error=f"session {hold.session_id} not found")
    return Attribution(kind, session=session)
