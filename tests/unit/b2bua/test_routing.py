"""Routing as a pure function: the INVITE, its source, the settings and the load in, a
Route or a Reject out."""

from __future__ import annotations

import ipaddress

from calltrackd.b2bua.routing import Load, Reject, Route, route
from calltrackd.config import Settings, SipSettings
from calltrackd.sip.endpoint import Address, RequestReceived, TransactionLayer
from calltrackd.sip.message import Request
from tests.unit.b2bua.net import CALLER, CARRIER, DID, Net, settings

PROXY = Address("udp", "10.9.9.9", 5060)


def invite(did: str = DID, extra: dict[str, str] | None = None,
           source: Address = CARRIER) -> Request:
    net = Net()
    net.carrier.invite(did, extra=extra)
    assert net.carrier.client_invite is not None
    [event] = TransactionLayer().receive(net.carrier.client_invite.to_bytes(), source, 0.0)
    assert isinstance(event, RequestReceived)
    return event.request


def with_proxy(s: Settings) -> Settings:
    sip = SipSettings(trusted_proxies=(ipaddress.ip_network("10.9.9.9/32"),))
    return Settings(sip=sip, carriers=s.carriers, trackers=s.trackers)


def test_a_carriers_invite_to_a_tracked_did_is_routed_to_the_trackers_targets() -> None:
    s = settings("sip:10.0.1.1:5060", "sip:10.0.1.2", ring_timeout=7.0)
    r = route(invite(), CARRIER, s, Load())
    assert isinstance(r, Route)
    assert (r.tracker.id, r.carrier, r.did, r.caller) == ("main", "carrier", DID, CALLER)
    assert [t.uri for t in r.targets] == ["sip:10.0.1.1:5060", "sip:10.0.1.2"]
    assert r.ring_timeout == 7.0


def test_an_invite_from_no_carrier_is_403() -> None:
    r = route(invite(), Address("udp", "10.7.7.7", 5060), settings(), Load())
    assert r == Reject(403, "unknown_source")


def test_a_trusted_proxy_names_the_carrier_and_a_stranger_cannot() -> None:
    s = with_proxy(settings())
    named = invite(extra={"X-Calltrackd-Carrier": "carrier"})
    assert isinstance(route(named, PROXY, s, Load()), Route)
    wrong = invite(extra={"X-Calltrackd-Carrier": "nobody"})
    assert route(wrong, PROXY, s, Load()) == Reject(403, "unknown_carrier", detail="nobody")
    # the header from anyone else is ignored: the source decides
    r = route(named, Address("udp", "10.7.7.7", 5060), s, Load())
    assert isinstance(r, Reject) and r.reason == "unknown_source"


def test_draining_max_calls_and_overload_shed_with_retry_after() -> None:
    s = Settings(sip=SipSettings(max_calls=2), carriers=settings().carriers,
                 trackers=settings().trackers)
    req = invite()
    drain = route(req, CARRIER, s, Load(draining=True))
    assert isinstance(drain, Reject) and drain.shed
    assert (drain.status, drain.headers, drain.tracker) == (503, (("Retry-After", "5"),), "main")
    full = route(req, CARRIER, s, Load(active_calls=2))
    assert isinstance(full, Reject) and (full.reason, full.headers) == (
        "max_calls", (("Retry-After", "1"),))
    busy = route(req, CARRIER, s, Load(active_calls=1, overloaded=True))
    assert isinstance(busy, Reject) and busy.reason == "overload" and busy.did == DID
    assert isinstance(route(req, CARRIER, s, Load(active_calls=1)), Route)


def test_max_forwards_zero_is_483_and_garbage_400() -> None:
    req = invite()
    req.headers.set("Max-Forwards", "0")
    assert route(req, CARRIER, settings(), Load()) == Reject(483, "max_forwards",
                                                             carrier="carrier")
    req.headers.set("Max-Forwards", "many")
    r = route(req, CARRIER, settings(), Load())
    assert isinstance(r, Reject) and r.status == 400


def test_a_required_extension_is_420_naming_it() -> None:
    r = route(invite(extra={"Require": "100rel, Timer"}), CARRIER, settings(), Load())
    assert isinstance(r, Reject)
    assert (r.status, r.headers) == (420, (("Unsupported", "100rel, timer"),))


def test_an_unknown_did_is_404() -> None:
    r = route(invite("+74990009999"), CARRIER, settings(), Load())
    assert isinstance(r, Reject) and (r.status, r.reason, r.did) == (404, "unknown_did",
                                                                      "+74990009999")
