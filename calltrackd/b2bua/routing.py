"""Where a new INVITE goes, as a pure function of the INVITE, its source, the settings
and the node's load: a `Route` (the tracker, the carrier, the dialled DID, the caller and
the targets to hunt through) or a `Reject` (the status to answer and why).

The checks, in order (DESIGN's routing box):

1. carrier ACL: the source is a carrier's address, or a trusted proxy
   (`sip.trusted_proxies`) names the carrier in X-Calltrackd-Carrier -> else 403;
2. drain: a draining node sheds the INVITE -> 503 Retry-After: 5;
3. shedding: `sip.max_calls` calls already, or the loop is overloaded -> 503
   Retry-After: 1 (shed, don't queue: a late answer costs the calls already accepted);
4. Max-Forwards: not a number -> 400, zero -> 483 (RFC 3261 §16.3);
5. Require: we support no extension -> 420 with Unsupported (§8.2.2.3);
6. the Request-URI, To and From parse -> else 400;
7. the DID (Request-URI or To user, per carrier, in E.164) names a tracker -> else 404.

Nothing here reads a clock, logs or counts: the engine logs and counts what a `Reject`
says. The tracker's routing rules (rules.py) then choose `Route.targets`, `ring_timeout`
and the hunt: `with_rules(route, rules, facts, at)`, with the call's `facts_of`.

Hunt `round_robin`: a route that `rotates` starts its hunt one target further down its
list at each call, by a count of the calls to that list (`rotated(route, count)`); the
count is the store's, shared by the nodes, under `rotation_key` (rotation.py asks it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..sip.endpoint import Address
from ..sip.message import Request
from ..sip.uri import NameAddr, SipSyntaxError, SipURI
from ..tracking.model import Attribution, ForwardTarget, Tracker
from ..tracking.numbers import normalize
from .pbx_headers import PbxHeaders, display_label, headers_for
from .rules import Facts, Hunt, TrackerRules, select

if TYPE_CHECKING:  # config imports b2bua.rules: a runtime import would be a cycle
    from ..config import Carrier, Settings

# the carrier a trusted proxy (Kamailio with its ACL) says an INVITE came from
CARRIER_HEADER = "X-Calltrackd-Carrier"
DRAIN_RETRY_AFTER = (("Retry-After", "5"),)  # seconds; another node takes the call meanwhile
SHED_RETRY_AFTER = (("Retry-After", "1"),)
SHED_REASONS = ("overload", "max_calls", "draining")


@dataclass(frozen=True, slots=True)
class Load:
    """What the node is doing when the INVITE arrives."""

    active_calls: int = 0
    overloaded: bool = False
    draining: bool = False


class Route:
    """A call to set up: hunt through `targets` in order, each for `ring_timeout` s.

    A plain class with read-only attributes (`Final`), equal when its fields are, shown
    as `Route(field=value, ...)`, changed copies by `replace`: not a dataclass, whose
    `__init__` mypyc leaves to the dataclasses module (Python); one per call."""

    __match_args__ = ("tracker", "carrier", "did", "caller", "targets", "ring_timeout",
                      "rule", "hunt", "attribution", "first_time", "headers", "display",
                      "from_user", "anonymous", "caller_name", "reject", "webhook_order")

    def __init__(self, tracker: Tracker, carrier: str, did: str, caller: str,
                 targets: tuple[ForwardTarget, ...], ring_timeout: float,
                 rule: str | None = None, hunt: Hunt = "sequential",
                 attribution: Attribution | None = None, first_time: bool | None = None,
                 headers: tuple[tuple[str, str], ...] = (), display: str | None = None,
                 from_user: str | None = None, anonymous: bool = False,
                 caller_name: str | None = None, reject: int | None = None,
                 webhook_order: bool = False) -> None:
        self.tracker: Final = tracker
        self.carrier: Final = carrier
        self.did: Final = did  # E.164
        # E.164 when it looks like a number, else From's user, or "anonymous"
        self.caller: Final = caller
        self.targets: Final = targets
        self.ring_timeout: Final = ring_timeout
        # the routing rule that chose the targets; None: the fallback
        self.rule: Final = rule
        self.hunt: Final = hunt  # the rules' hunt mode (round_robin: see `rotated`)
        # what tracking said before routing, when the rules had to wait for it (the
        # call's record then keeps it instead of asking again)
        self.attribution: Final = attribution
        self.first_time: Final = first_time
        # toward the PBX: headers added to the forwarded INVITE (the attribution's
        # X-Calltrackd-*, the caller's Diversion/History-Info, our P-Asserted-Identity),
        # the label put before the caller's display name, the user part of From (the
        # asserted caller; None: the caller's From), and whether the caller asked for
        # privacy (Privacy: id: the PBX gets an anonymous From and no P-Asserted-Identity)
        self.headers: Final = headers
        self.display: Final = display
        self.from_user: Final = from_user
        self.anonymous: Final = anonymous
        # the routing webhook's answer: the caller's name toward the PBX, a status to
        # reject with
        self.caller_name: Final = caller_name
        self.reject: Final = reject
        self.webhook_order: Final = webhook_order  # the webhook named the targets

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def replace(self, **changes: Any) -> Route:
        """A copy with `changes` (as `dataclasses.replace`)."""
        fields = dict(zip(self.__match_args__, self._fields(), strict=True))
        unknown = changes.keys() - fields.keys()
        if unknown:
            raise TypeError(f"Route has no field {sorted(unknown)[0]!r}")
        fields.update(changes)
        return Route(**fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}"
                           for name, value in zip(self.__match_args__, self._fields(),
                                                  strict=True))
        return f"Route({fields})"


@dataclass(frozen=True, slots=True)
class Reject:
    """No call: answer `status` with `headers`. `reason` is one word for logs and
    counters (unknown_source, unknown_carrier, draining, max_calls, overload,
    max_forwards, require, bad_request, unknown_did); `carrier`, `did`, `tracker` and
    `detail` say what was known of the INVITE."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    carrier: str | None = None
    did: str | None = None
    tracker: str | None = None
    detail: str | None = None

    @property
    def shed(self) -> bool:
        """Refused for the node's state, not for the INVITE (counted as shed)."""
        return self.reason in SHED_REASONS


def route(invite: Request, source: Address, settings: Settings, load: Load) -> Route | Reject:
    carrier = carrier_of(invite, source, settings)
    if isinstance(carrier, Reject):
        return carrier
    if load.draining:
        return _shed("draining", invite, carrier, settings, DRAIN_RETRY_AFTER)
    max_calls = settings.sip.max_calls
    if max_calls and load.active_calls >= max_calls:
        return _shed("max_calls", invite, carrier, settings, SHED_RETRY_AFTER)
    if load.overloaded:
        return _shed("overload", invite, carrier, settings, SHED_RETRY_AFTER)
    mf = invite.headers.get("Max-Forwards")
    if mf is not None:
        if not mf.strip().isdigit():
            return Reject(400, "max_forwards", carrier=carrier.name)
        if int(mf) <= 0:
            return Reject(483, "max_forwards", carrier=carrier.name)
    unsupported = refused_require(invite)
    if unsupported is not None:
        return unsupported
    try:
        ruri = SipURI.parse(invite.uri)
        to = invite.to
        from_ = invite.from_
    except SipSyntaxError:
        return Reject(400, "bad_request", carrier=carrier.name)
    raw = (ruri.user if carrier.did_from == "ruri" else to.uri.user) or ""
    did = normalize(raw.split(";")[0], carrier.default_country)
    tracker = settings.tracker_by_did(did) if did else None
    if tracker is None or did is None:
        return Reject(404, "unknown_did", carrier=carrier.name, did=raw)
    asserted = asserted_user(invite) if carrier.trust_pai else None
    if asserted is not None:
        caller = normalize(asserted, carrier.default_country) or asserted
    else:
        caller = caller_number(from_, carrier.default_country)
    anonymous = wants_privacy(invite)
    headers = [(name, value) for name in KEPT_HEADERS
               for value in invite.headers.get_all(name)]
    if asserted is not None and not anonymous:
        headers.append((PAI, f"<sip:{asserted}@{ruri.host}>"))
    return Route(tracker=tracker, carrier=carrier.name, did=did, caller=caller,
                 targets=tracker.forward, ring_timeout=tracker.ring_timeout,
                 headers=tuple(headers), from_user=asserted, anonymous=anonymous)


PAI = "P-Asserted-Identity"
# the caller's INVITE headers the forwarded INVITE keeps: who diverted the call to us
KEPT_HEADERS = ("Diversion", "History-Info")
_PAI_USER = re.compile(r"<\s*(?:sips?|tel):([^@;>\s]+)", re.IGNORECASE)
PRIVATE = frozenset({"id", "user", "header"})  # RFC 3323/3325 values that hide the caller


def asserted_user(invite: Request) -> str | None:
    """The user part (a number) of the first P-Asserted-Identity (RFC 3325), or None."""
    for value in invite.headers.get_all(PAI):
        m = _PAI_USER.search(value)
        if m and m.group(1).lower() != "anonymous":
            return m.group(1)
    return None


def wants_privacy(invite: Request) -> bool:
    """Whether the caller asked that their identity be withheld (Privacy: id, RFC 3325)."""
    for value in invite.headers.get_all("Privacy"):
        if PRIVATE & {v.strip().lower() for v in re.split(r"[;,]", value)}:
            return True
    return False


def facts_of(r: Route, attribution: Attribution | None = None,
             first_time: bool | None = None) -> Facts:
    """What the rules may ask of a call: its DID and caller, and the attribution when
    tracking gave one (an attribution of kind "none" knows no visitor)."""
    known = attribution if attribution is not None and attribution.kind != "none" else None
    caller = None if r.caller == "anonymous" else r.caller
    return Facts.of(r.did, caller, known, first_time)


def with_rules(r: Route, rules: TrackerRules | None, facts: Facts, at: dt.datetime,
               attribution: Attribution | None = None, first_time: bool | None = None,
               pbx: PbxHeaders | None = None) -> Route:
    """The route with the targets, ring timeout and hunt the tracker's rules choose at
    `at` for `facts` (the rules only ever name the tracker's own targets), and the
    attribution's headers and display label toward the PBX (`pbx`)."""
    if rules is None and pbx is None:
        return r
    targets, ring, rule, hunt = r.targets, r.ring_timeout, r.rule, r.hunt
    if rules is not None:
        d = select(rules, facts, at)
        targets, ring, rule, hunt = d.targets, d.ring_timeout, d.rule, d.hunt
    headers, display = r.headers, r.display
    if pbx is not None:
        headers += headers_for(pbx, attribution, first_time)
        display = display_label(pbx, attribution)
    return Route(tracker=r.tracker, carrier=r.carrier, did=r.did, caller=r.caller,
                 targets=targets, ring_timeout=ring, rule=rule, hunt=hunt,
                 attribution=attribution, first_time=first_time, headers=headers,
                 display=display, from_user=r.from_user, anonymous=r.anonymous)


def with_answer(r: Route, targets: tuple[ForwardTarget, ...] | None, reject: int | None,
                caller_name: str | None) -> Route:
    """The route as the routing webhook's answer changes it (its targets are the
    tracker's own: routing_webhook.parse_answer picks them by name)."""
    return Route(tracker=r.tracker, carrier=r.carrier, did=r.did, caller=r.caller,
                 targets=() if reject is not None else (targets or r.targets),
                 ring_timeout=r.ring_timeout, rule="routing_webhook" if (
                     targets or reject is not None) else r.rule, hunt=r.hunt,
                 attribution=r.attribution, first_time=r.first_time, headers=r.headers,
                 display=r.display, from_user=r.from_user, anonymous=r.anonymous,
                 caller_name=caller_name or r.caller_name, reject=reject,
                 webhook_order=bool(targets) or r.webhook_order)


def rotates(r: Route) -> bool:
    """Whether the route's hunt starts where the rotation is (hunt round_robin, two targets
    or more, and not an order the routing webhook chose: its answer is rung as it says)."""
    return r.hunt == "round_robin" and len(r.targets) > 1 and not r.webhook_order


def rotation_key(tracker: str, targets: Sequence[ForwardTarget]) -> str:
    """The store's rotation counter for a tracker's target list: the tracker and a digest
    of the targets' URIs in their configured order. Rules, pools and numbers that ring
    the same list share its rotation (its targets take turns over all of their calls);
    another list rotates on its own, and a list the configuration changes starts anew.
    Every node with the same configuration names the same counter."""
    digest = hashlib.blake2b("\n".join(t.uri for t in targets).encode(), digest_size=8)
    return f"{tracker}:{digest.hexdigest()}"


def rotated(r: Route, count: int) -> Route:
    """The route with its targets starting at the `count`th call's turn: count 1 (the
    list's first call) rings them as configured, count 2 from the second target, and so
    on round; failover then goes on down the list and back to its start, as sequential
    does. Target health leaves the down ones out afterwards (their turn passes on)."""
    n = len(r.targets)
    start = (count - 1) % n if n else 0
    if start == 0:
        return r
    return r.replace(targets=r.targets[start:] + r.targets[:start])


def carrier_of(invite: Request, source: Address, settings: Settings) -> Carrier | Reject:
    """The carrier entry an INVITE came in by: the one named in X-Calltrackd-Carrier
    when a trusted proxy sent it, else the one whose addresses hold the source. The
    header from anyone else is ignored; a trusted proxy naming no configured carrier is
    refused (it is configured wrong)."""
    if settings.is_trusted_proxy(source.host):
        named = invite.headers.get(CARRIER_HEADER)
        if named is not None:
            carrier = settings.carrier_by_name(named.strip())
            if carrier is None:
                return Reject(403, "unknown_carrier", detail=named.strip()[:64])
            return carrier
    carrier = settings.carrier_for(source.host)
    if carrier is None:
        return Reject(403, "unknown_source")
    return carrier


def refused_require(request: Request) -> Reject | None:
    """§8.2.2.3: we support no extension a request may require; 420 if it names one."""
    require = [v.lower() for v in request.headers.values("Require")]
    if not require:
        return None
    return Reject(420, "require", (("Unsupported", ", ".join(require)),))


def dialled(invite: Request, carrier: Carrier) -> str | None:
    """The DID in E.164 where the carrier puts it (Request-URI or To); raises
    SipSyntaxError for a URI that does not parse."""
    if carrier.did_from == "ruri":
        user = SipURI.parse(invite.uri).user
    else:
        user = invite.to.uri.user
    return normalize((user or "").split(";")[0], carrier.default_country)


def caller_number(from_: NameAddr, default_country: str | None) -> str:
    """The caller's number in E.164 when it looks like a number, else From's user as is."""
    user = (from_.uri.user or "").split(";")[0]
    return normalize(user, default_country) or user or "anonymous"


def _shed(reason: str, invite: Request, carrier: Carrier, settings: Settings,
          headers: tuple[tuple[str, str], ...]) -> Reject:
    try:
        did = dialled(invite, carrier)
    except SipSyntaxError:
        did = None
    found = settings.tracker_by_did(did) if did else None
    return Reject(503, reason, headers, carrier=carrier.name, did=did,
                  tracker=found.id if found is not None else None)
