"""What a report reads of a call and of a visit: the traffic source (channel, source,
medium; landing page, referrer domain), a call's `CallFact` and a visit's cell."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from calltrackd.tracking.model import Attribution, CallRecord, VisitorSession, is_anonymous

from .localtime import DAY

LEAD_STATUSES: tuple[str, ...] = ("new", "qualified", "won", "lost", "spam")
MAX_TAGS = 20
MAX_TAG_LENGTH = 64


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


# (channel, source, medium, campaign, term, content, landing_page, referrer_domain,
# static_channel): what a call's fact takes from its attribution
_Traffic = tuple[str | None, str | None, str | None, str | None, str | None, str | None,
                 str | None, str | None, str | None]
_TRAFFIC_CACHE_SIZE = 4096
# id(attribution) -> (the attribution, its part): a call's saves (ringing, answered,
# ended) carry the same Attribution object, so its URLs are parsed once per call, not
# once per save. The entry holds the object, so its id is not reused while cached.
_traffic_cache: dict[int, tuple[Attribution, _Traffic]] = {}


def _traffic_of(att: Attribution | None) -> _Traffic:
    if att is None:
        return (None,) * 9
    hit = _traffic_cache.get(id(att))
    if hit is not None and hit[0] is att:
        return hit[1]
    session = att.session
    channel, source, medium = call_traffic(att)
    part: _Traffic = (
        _clean(channel), _clean(source), _clean(medium),
        _clean(session.utm_campaign) if session else None,
        _clean(session.utm_term) if session else None,
        _clean(session.utm_content) if session else None,
        _clean(landing_page(session.landing_page)) if session else None,
        _clean(referrer_domain(session.referrer)) if session else None,
        _clean(att.channel) if att.kind == "static" else None,
    )
    if len(_traffic_cache) >= _TRAFFIC_CACHE_SIZE:
        del _traffic_cache[next(iter(_traffic_cache))]  # the oldest entry
    _traffic_cache[id(att)] = (att, part)
    return part


def call_fact(record: CallRecord) -> CallFact:
    """The call's fact. Its traffic part is computed once per Attribution object
    (`_traffic_of`), the rest (outcome, times, ...) at every save."""
    (channel, source, medium, campaign, term, content, landing, referrer,
     static_channel) = _traffic_of(record.attribution)
    return CallFact(
        id=record.id, tracker=record.tracker, ts=record.started_at.timestamp(),
        did=record.did,
        caller=None if is_anonymous(record.caller) else _clean(record.caller),
        channel=channel, source=source, medium=medium, campaign=campaign, term=term,
        content=content, landing_page=landing, referrer_domain=referrer,
        static_channel=static_channel,
        first_time=record.first_time_caller, outcome=record.outcome,
        qualified=record.qualified, ring_ms=_ms(record.ring_seconds),
        talk_ms=_ms(record.talk_seconds), tags=record.tags,
        value_cents=cents(record.value),
    )


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
