"""The domain vocabulary: plain frozen dataclasses, importing nothing of the project.

Configuration (calltrackd/config/) builds the tracker side; the store and webhooks import the
record side. Times are timezone-aware UTC datetimes or unix seconds (floats) where noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["answered", "busy", "no_answer", "cancelled", "failed"]
HangupBy = Literal["caller", "callee", "system"]
AttributionKind = Literal["dynamic", "static", "default", "expired", "none"]
ReservationKind = Literal["dynamic", "default"]

# caller ids that say nothing about who called (withheld, unknown): no caller history,
# neither first-time nor repeat, no distinct caller in reports; in every store alike
ANONYMOUS_CALLERS = frozenset({"", "anonymous", "unknown", "unavailable", "restricted",
                               "private"})


def is_anonymous(caller: str) -> bool:
    """A caller id that says nothing about who called (withheld, unknown)."""
    return caller.strip().lower() in ANONYMOUS_CALLERS


# --- configuration vocabulary -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """Where a tracker's calls go: a SIP URI, optionally with digest credentials."""

    uri: str
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    sources: tuple[str, ...]  # "google/cpc", "google/*", "*/cpc", a channel ("organic"), "*"
    numbers: tuple[str, ...]  # E.164
    # The pool's own overflow number (E.164): shown to a visitor the pool cannot serve;
    # its calls are attributed `default` with the pool's name, so they keep their channel.
    default_number: str | None = None


@dataclass(frozen=True, slots=True)
class StaticNumber:
    number: str  # E.164
    channel: str


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    url: str
    secret: str
    events: tuple[str, ...] = ("call.started", "call.answered", "call.ended")
    batch: int = 1  # events per request (> 1: the body is a JSON array)


# --- exports through the outbox (analytics and alerts) -------------------------------
# `kind` of an outbox row besides "webhook"; `ref` is the row's non-secret destination
# name (its `url` column): secrets stay in the configuration and are read at send time.


@dataclass(frozen=True, slots=True)
class Ga4Export:
    measurement_id: str
    api_secret: str
    base_url: str = "https://www.google-analytics.com"
    event: str = "calltrackd_call"  # every ended call ("" = none)
    outcome_events: tuple[tuple[str, str], ...] = ()  # (outcome, name) overriding `event`
    qualified_event: str = "calltrackd_qualified_call"  # also sent for qualified calls
    kind: str = "ga4"

    @property
    def ref(self) -> str:
        return f"ga4:{self.measurement_id}"


@dataclass(frozen=True, slots=True)
class MetricaExport:
    counter_id: int
    token: str
    base_url: str = "https://api-metrika.yandex.net"
    batch: int = 1000  # calls per upload
    upload_interval: float = 60.0  # calls wait for the next multiple of it, then go together
    kind: str = "metrica"

    @property
    def ref(self) -> str:
        return f"metrica:{self.counter_id}"


@dataclass(frozen=True, slots=True)
class AlertExport:
    kind: str  # "telegram" | "slack"
    url: str = ""  # slack: the incoming webhook URL (a secret)
    bot_token: str = ""  # telegram
    chat_id: str = ""  # telegram
    base_url: str = "https://api.telegram.org"  # telegram
    outcomes: tuple[str, ...] = ("busy", "no_answer", "cancelled", "failed")
    name: str = ""  # tells two alerts of one kind apart in the outbox (config index)

    @property
    def ref(self) -> str:
        if self.kind == "telegram":
            return f"telegram:{self.chat_id}"
        return f"slack:{self.name}"


@dataclass(frozen=True, slots=True)
class Tracker:
    id: str
    public_key: str
    default_number: str
    forward: tuple[ForwardTarget, ...]
    reservation_ttl: float = 360.0
    cooldown: float = 0.0
    attribution_grace: float = 1800.0  # measured: README, "Attribution confidence"
    target_call_min_seconds: float = 30.0
    ring_timeout: float = 30.0
    # a visitor seen again within this time gets the number they held last, if it is free
    returning_window: float = 30 * 86400.0
    # a file of traffic-source rules read before the packaged ones (tracking/sources.py)
    source_rules: str | None = None
    pools: tuple[Pool, ...] = ()
    static: tuple[StaticNumber, ...] = ()
    webhooks: tuple[WebhookEndpoint, ...] = ()
    analytics: tuple[Ga4Export | MetricaExport, ...] = ()
    alerts: tuple[AlertExport, ...] = ()
    timezone: str = "UTC"  # IANA name: the dashboard's days and hours
    viewer_tokens: tuple[str, ...] = ()  # read-only tokens that see this tracker only

    def numbers(self) -> tuple[str, ...]:
        """Every DID this tracker answers for: default, pool and static numbers."""
        out = [self.default_number]
        for pool in self.pools:
            out.extend(pool.numbers)
            if pool.default_number is not None:
                out.append(pool.default_number)
        out.extend(s.number for s in self.static)
        return tuple(out)


# --- records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VisitorSession:
    """One visit. `source`, `medium`, `channel` are as the server classified the arrival
    (tracking/sources.py); None in sessions stored before classification existed."""

    id: str
    tracker: str
    client_id: str | None = None
    ym_uid: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    first_seen: float = 0.0  # unix seconds
    last_seen: float = 0.0
    source: str | None = None  # "google", "vk.com", "(direct)"
    medium: str | None = None  # "organic", "social", "(none)"
    channel: str | None = None  # paid | organic | social | referral | email | direct | other
    visitor_id: str | None = None  # the snippet's first-party visitor id
    ga_session_id: str | None = None  # GA4's session id (the _ga_<container> cookie)

    def seen(self, at: float) -> VisitorSession:
        """This session last seen at `at` (by hand: dataclasses.replace costs 3 us)."""
        return VisitorSession(
            self.id, self.tracker, self.client_id, self.ym_uid, self.utm_source,
            self.utm_medium, self.utm_campaign, self.utm_term, self.utm_content,
            self.referrer, self.landing_page, self.custom, self.first_seen, at,
            self.source, self.medium, self.channel, self.visitor_id, self.ga_session_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "ym_uid": self.ym_uid,
            "visitor_id": self.visitor_id,
            "ga_session_id": self.ga_session_id,
            "source": self.source,
            "medium": self.medium,
            "channel": self.channel,
            "utm_source": self.utm_source,
            "utm_medium": self.utm_medium,
            "utm_campaign": self.utm_campaign,
            "utm_term": self.utm_term,
            "utm_content": self.utm_content,
            "referrer": self.referrer,
            "landing_page": self.landing_page,
            "custom": dict(self.custom),
        }


@dataclass(frozen=True, slots=True)
class Attribution:
    kind: AttributionKind
    channel: str | None = None  # a static number's channel name
    session: VisitorSession | None = None
    # Set when attribution could not be computed (store down or too slow): the call was
    # forwarded unattributed and the record says why.
    error: str | None = None
    # The probability that `session` is the visitor who really called (tracking/
    # confidence.py): 1 for a static number, 0 when no visitor is named (default, none).
    # None for records written before confidences existed.
    confidence: float | None = None
    # The pool of the dialled number (a pool number or a pool's default number).
    pool: str | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.session
        out: dict[str, Any] = {"kind": self.kind}
        # channel, source, medium at the top: a static number's channel name, else the
        # visit's classified ones (None for default and none)
        out["channel"] = self.channel if self.channel is not None else (
            s.channel if s else None)
        out["source"] = s.source if s else None
        out["medium"] = s.medium if s else None
        out["session"] = s.to_json() if s else None
        out["confidence"] = self.confidence
        out["pool"] = self.pool
        if self.error:
            out["error"] = self.error
        return out


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One CDR: the `call` object of the API and webhooks."""

    id: str
    tracker: str
    did: str
    caller: str
    started_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    ring_seconds: float | None = None
    talk_seconds: float | None = None
    outcome: Outcome | None = None  # None while the call is in progress
    sip_code: int | None = None
    hangup_by: HangupBy | None = None
    target: str | None = None
    first_time_caller: bool | None = None
    qualified: bool | None = None
    attribution: Attribution | None = None
    # the configured `[[carriers]]` entry the call came in by (its source address, or the
    # one a trusted proxy named); None in records written before it was recorded
    carrier: str | None = None
    reason: str | None = None  # why the system ended it, e.g. "restart" (a crashed node)
    # the stored recording: {"url", "seconds", "bytes"} (media/, http/recordings.py)
    recording: dict[str, Any] | None = None
    # media anchoring of a tracker with media = "anchor": {"mode": "anchor", "recorded"}
    # or {"mode": "direct", "reason": why rtpengine was not used}
    media: dict[str, Any] | None = None
    # --- written back by a CRM (PATCH /v1/calls/{id}); the call's own steps keep them
    tags: tuple[str, ...] = ()
    lead_status: str | None = None
    value: float | None = None  # money, >= 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "tracker": self.tracker,
            "did": self.did,
            "caller": self.caller,
            "carrier": self.carrier,
            "started_at": _iso(self.started_at),
            "answered_at": _iso(self.answered_at),
            "ended_at": _iso(self.ended_at),
            "ring_seconds": self.ring_seconds,
            "talk_seconds": self.talk_seconds,
            "outcome": self.outcome,
            "sip_code": self.sip_code,
            "hangup_by": self.hangup_by,
            "target": self.target,
            "first_time_caller": self.first_time_caller,
            "qualified": self.qualified,
            "attribution": self.attribution.to_json() if self.attribution else None,
            "tags": list(self.tags),
            "lead_status": self.lead_status,
            "value": self.value,
        }
        if self.reason is not None:  # only on records the system ended for a reason
            out["reason"] = self.reason
        if self.recording is not None:  # only on recorded calls, once the file is stored
            out["recording"] = self.recording
        if self.media is not None:  # only on calls of trackers that anchor media
            out["media"] = self.media
        return out


DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event for one endpoint, in the durable outbox.

    `event_id` is the same for every endpoint and every retry of an event (receivers
    deduplicate on it); `body` is fixed when the event is created, so retries resend the
    same bytes.
    """

    id: str  # "dlv_...", unique per (event, endpoint)
    event_id: str  # "evt_..."
    event: str  # call.started | call.answered | call.ended
    tracker: str
    url: str
    body: bytes
    created_at: float  # unix seconds
    attempts: int = 0
    next_attempt_at: float = 0.0
    status: DeliveryStatus = "pending"
    last_error: str | None = None
    # webhook | ga4 | metrica | telegram | slack; for the others `url` is a reference
    # such as "ga4:G-XXXX" naming the configured destination, never a secret
    kind: str = "webhook"


# --- visitor sessions and reservations (tracking/service.py, the store, HTTP) ---------


@dataclass(frozen=True, slots=True)
class SessionInput:
    """What the site snippet sends about a visitor (`POST /v1/sessions`).

    `source`, `medium`, `channel` are not sent: the service fills them in by classifying
    the UTM tags, the landing page and the referrer (tracking/sources.py)."""

    client_id: str | None = None
    ym_uid: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    referrer: str | None = None
    landing_page: str | None = None
    custom: dict[str, Any] | None = None  # None: not sent (keep the session's)
    visitor_id: str | None = None
    ga_session_id: str | None = None
    source: str | None = None
    medium: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class LastVisit:
    """What the store remembers of a visitor (by client_id, ym_uid or visitor_id): their
    latest session and the pool number it held last (None: it never held one)."""

    session_id: str
    number: str | None
    at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class SessionAnswer:
    """The answer to `POST /v1/sessions` and its ping; `expires_at` in unix seconds."""

    session_id: str
    number: str
    kind: ReservationKind
    expires_at: float


@dataclass(frozen=True, slots=True)
class Hold:
    """One visitor session's hold on a pool number, from `started_at` until `until`.

    For the current holder `until` is when the reservation expires (renewals move it); for
    the last holder it is when the reservation ended (expired or released). Unix seconds.
    """

    number: str
    session_id: str
    tracker: str
    pool: str
    started_at: float
    until: float


@dataclass(frozen=True, slots=True)
class NumberState:
    """A number's reservation state, as persisted and restored by a store."""

    number: str
    tracker: str
    pool: str
    holder: str | None = None
    held_since: float = 0.0
    expires_at: float = 0.0
    last_holder: str | None = None
    last_held_since: float = 0.0
    released_at: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """One hour of a pool's use: peak concurrent reservations and requests turned away."""

    tracker: str
    pool: str
    hour: int  # unix seconds // 3600
    peak: int
    shortfall: int
