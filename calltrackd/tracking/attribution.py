"""Who a call belongs to: a pure function of the dialled number and what is known of it.

Rules (issue 3, point 3), in order:

1. the number is held by a session now → `dynamic`, with that session;
2. a static number → `static`, with its channel;
3. the tracker's default number → `default`; a pool's own default number → `default`
   with the pool's name as its channel (overflow calls keep their channel);
4. a pool number nobody holds now → `expired`, with the session whose hold ended last,
   provided nobody held the number since and that hold ended within
   `attribution_grace`;
5. otherwise `none`.

Holds are judged as of `now`, so a call attributed late (say from a queued CDR) still
goes to whoever held the number when it rang. Every attribution carries a `confidence`
(`confidence.py`) from the number's recent holders (`history`) and the tracker's delay
model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from calltrackd.tracking.allocator import match_pool
from calltrackd.tracking.confidence import DelayModel, confidence
from calltrackd.tracking.model import (
    Attribution,
    AttributionKind,
    Hold,
    Pool,
    Tracker,
    VisitorSession,
    is_anonymous,
)

__all__ = [
    "attribute",
    "is_anonymous",  # the domain's (tracking/model.py), kept importable from here
    "is_pool_number",
    "overflow_for",
    "overflow_number",
    "qualified",
]

# (static number → channel, pool number → pool name, pool default number → pool name)
_Roles = tuple[dict[str, str], dict[str, str], dict[str, str]]
_roles_cache: dict[int, tuple[Tracker, _Roles]] = {}


def _roles(tracker: Tracker) -> _Roles:
    """The roles of a tracker's numbers; trackers are frozen.
    Cached by identity, not by hash: hashing a tracker hashes its every pool number."""
    hit = _roles_cache.get(id(tracker))
    if hit is not None and hit[0] is tracker:
        return hit[1]
    static = {s.number: s.channel for s in tracker.static}
    pooled = {n: pool.name for pool in tracker.pools for n in pool.numbers}
    overflow = {p.default_number: p.name for p in tracker.pools if p.default_number}
    if len(_roles_cache) >= 1024:  # trackers replaced by reloads
        _roles_cache.clear()
    _roles_cache[id(tracker)] = (tracker, (static, pooled, overflow))
    return static, pooled, overflow


def is_pool_number(tracker: Tracker, number: str) -> bool:
    return number in _roles(tracker)[1]


def overflow_number(tracker: Tracker, pool: Pool | None) -> str:
    """The number shown to a visitor no pool number is free for: the pool's own
    default number if it has one, else the tracker's."""
    if pool is not None and pool.default_number:
        return pool.default_number
    return tracker.default_number


def overflow_for(tracker: Tracker, session: VisitorSession | None) -> str:
    """`overflow_number` for the pool that serves this visitor's traffic."""
    if session is None:
        return tracker.default_number
    if session.source is not None and session.medium is not None:  # classified
        pool = match_pool(tracker.pools, session.source, session.medium, session.channel)
    else:
        pool = match_pool(tracker.pools, session.utm_source, session.utm_medium)
    return overflow_number(tracker, pool)


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
    history: Sequence[Hold] = (),
    model: DelayModel | None = None,
) -> tuple[Attribution, bool | None]:
    """The attribution of a call to `did` at `now`, and whether it is a first-time caller.

    `current` and `last` are the number's current and last holder as the store knows
    them (a current hold may already have lapsed); `sessions` holds their visitor
    sessions by id. `called_before` is the caller history (None: unknown, e.g. a withheld
    caller id or the store did not answer); first_time_caller is then None too.
    `history` lists the number's recent holds (the store's holder history) and `model`
    the tracker's delay model, for the confidence (the prior for its reservation_ttl
    when None).
    """
    first_time = None if called_before is None or is_anonymous(caller) else not called_before
    holds = [h for h in (current, last) if h is not None and h.number == did]
    static, pooled, overflow = _roles(tracker)
    pool = pooled.get(did)
    every = [*holds, *(h for h in history if h.number == did)]
    m = model if model is not None else DelayModel.prior(tracker.reservation_ttl)
    for hold in holds:
        if _held_at(hold, now):
            return _with_session("dynamic", hold, sessions, pool,
                                 confidence(m, hold, every, now)), first_time
    channel = static.get(did)
    if channel is not None:
        return Attribution("static", channel=channel, confidence=1.0), first_time
    if did == tracker.default_number:
        return Attribution("default", confidence=0.0), first_time
    own = overflow.get(did)
    if own is not None:
        return Attribution("default", channel=own, confidence=0.0, pool=own), first_time
    if pool is not None:
        ended = [h for h in holds if h.until <= now]
        if ended:
            latest = max(ended, key=lambda h: h.until)
            held_since = any(
                h is not latest and latest.until < h.started_at <= now for h in holds
            )
            if not held_since and now - latest.until <= tracker.attribution_grace:
                return _with_session("expired", latest, sessions, pool,
                                     confidence(m, latest, every, now)), first_time
    return Attribution("none", confidence=0.0, pool=pool), first_time


def _with_session(
    kind: AttributionKind, hold: Hold, sessions: Mapping[str, VisitorSession],
    pool: str | None, conf: float,
) -> Attribution:
    session = sessions.get(hold.session_id)
    if session is None:
        # The number was held, but the session record is gone (pruned or lost by the
        # store): keep the kind, say what is missing rather than guess.
        return Attribution(kind, error=f"session {hold.session_id} not found",
                           confidence=conf, pool=pool)
    return Attribution(kind, session=session, confidence=conf, pool=pool)
