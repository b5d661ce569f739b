"""A UAC dialog against a UAS dialog (RFC 3261 §12), every message through the codec as it
would cross the wire, with record-routing proxies simulated between them. No sockets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeVar

import pytest

from calltrackd.sip.dialog import Dialog, DialogError, make_cancel
from calltrackd.sip.errors import RemoteProtocolError
from calltrackd.sip.message import Request, Response, parse_message, response_for

ALICE_CONTACT = "<sip:alice@192.0.2.1:5060>"
BOB_CONTACT = "<sip:bob@198.51.100.2:5070;transport=udp>"
P1 = "<sip:p1.example.net;lr>"  # the proxy next to Alice
P2 = "<sip:p2.example.net;lr;ftag=ua>"  # the proxy next to Bob

M = TypeVar("M", Request, Response)
_branches = itertools.count()


def via() -> str:
    return f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{next(_branches)}"


def wire(msg: M) -> M:
    parsed = parse_message(msg.to_bytes())
    assert isinstance(parsed, type(msg))
    return parsed


def alice() -> Dialog:
    return Dialog("call-1@alice", "ua", '"Alice" <sip:alice@a.example>;tag=ua',
                  "<sip:bob@b.example>", "sip:bob@b.example")


def through_proxies(req: Request, record_routes: Sequence[str]) -> Request:
    """The request as it reaches the far end: each proxy on the way, in `record_routes`
    order, puts its Record-Route on top."""
    for rr in record_routes:
        req.headers.prepend("Record-Route", rr)
    return wire(req)


def answer(uas: Dialog, request: Request, status: int, contact: str | None = BOB_CONTACT,
           record_routes: Sequence[str] | None = None) -> Response:
    """The UAS's response as it reaches the UAC, the Record-Route copied back (§12.1.1)."""
    resp = response_for(request, status)
    resp.headers.set("To", uas.local)
    if contact:
        resp.headers.add("Contact", contact)
    if record_routes is None:
        record_routes = request.headers.get_all("Record-Route")
    for rr in record_routes:
        resp.headers.add("Record-Route", rr)
    return wire(resp)


def established(record_routes: Sequence[str] = (P1, P2)) -> tuple[Dialog, Dialog, Request]:
    """Alice's and Bob's dialogs after an answered INVITE, and that INVITE as Bob got it."""
    uac = alice()
    invite = through_proxies(uac.request("INVITE", via(), ALICE_CONTACT), record_routes)
    uas = Dialog.uas(invite, "ub")
    uac.receive_response(answer(uas, invite, 200))
    return uac, uas, invite


def routes(req: Request) -> list[str]:
    return req.headers.values("Route")


def test_each_side_routes_through_the_proxies_in_its_own_direction() -> None:
    uac, uas, _ = established()
    assert list(uas.route_set) == [P2, P1]  # the Record-Route as the request carried it
    assert list(uac.route_set) == [P1, P2]  # reversed: Alice's first hop is her proxy
    assert str(uac.next_hop()) == "sip:p1.example.net;lr"
    assert str(uas.next_hop()) == "sip:p2.example.net;lr;ftag=ua"


def test_in_dialog_requests_carry_the_route_set_and_go_to_the_peers_contact() -> None:
    uac, uas, _ = established()
    bye = wire(uac.request("BYE", via()))
    assert bye.uri == "sip:bob@198.51.100.2:5070;transport=udp"
    assert routes(bye) == [P1, P2]
    assert bye.headers.get("From") == '"Alice" <sip:alice@a.example>;tag=ua'
    assert bye.headers.get("To") == "<sip:bob@b.example>;tag=ub"
    back = wire(uas.request("BYE", via()))
    assert back.uri == "sip:alice@192.0.2.1:5060"
    assert routes(back) == [P2, P1]
    assert back.headers.get("From") == "<sip:bob@b.example>;tag=ub"
    assert back.headers.get("To") == '"Alice" <sip:alice@a.example>;tag=ua'


def test_without_proxies_requests_go_straight_to_the_contact() -> None:
    uac, uas, _ = established(record_routes=())
    bye = wire(uac.request("BYE", via()))
    assert bye.uri == "sip:bob@198.51.100.2:5070;transport=udp"
    assert "Route" not in bye.headers
    assert str(uas.next_hop()) == "sip:alice@192.0.2.1:5060"


def test_a_strict_router_gets_the_request_uri_and_the_target_travels_last() -> None:
    strict = "<sip:p2.example.net;method=INVITE>"  # RFC 2543: no lr
    _, uas, _ = established(record_routes=(P1, strict))
    bye = wire(uas.request("BYE", via()))
    assert bye.uri == "sip:p2.example.net"  # `method` is not allowed in a Request-URI
    assert routes(bye) == [P1, "<sip:alice@192.0.2.1:5060>"]


def test_cseq_rises_with_each_new_request_and_ack_reuses_the_invites() -> None:
    uac = alice()
    first = uac.request("INVITE", via(), ALICE_CONTACT)
    assert first.cseq == (1, "INVITE")
    # challenged (401): the retry is a new request
    retry = through_proxies(uac.request("INVITE", via(), ALICE_CONTACT), ())
    assert retry.cseq == (2, "INVITE")
    uas = Dialog.uas(retry, "ub")
    uac.receive_response(answer(uas, retry, 200))
    assert wire(uac.request("ACK", via())).cseq == (2, "ACK")
    assert wire(uac.request("INFO", via())).cseq == (3, "INFO")
    reinvite = uac.request("INVITE", via(), ALICE_CONTACT)
    assert reinvite.cseq == (4, "INVITE")
    assert uac.request("ACK", via()).cseq == (4, "ACK")
    assert uac.request("ACK", via(), cseq=2).cseq == (2, "ACK")  # a late 2xx of an older one
    assert uac.request("BYE", via()).cseq == (5, "BYE")
    assert uas.request("BYE", via()).cseq == (1, "BYE")  # each direction counts on its own


def test_cancel_copies_the_invite_even_after_an_early_dialog() -> None:
    uac = alice()
    invite = uac.request("INVITE", via(), ALICE_CONTACT)
    received = through_proxies(invite, ())
    uac.receive_response(answer(Dialog.uas(received, "ub"), received, 180))
    assert uac.remote_tag == "ub"
    cancel = wire(make_cancel(invite))
    assert cancel.cseq == (1, "CANCEL")
    assert cancel.uri == invite.uri
    assert cancel.top_via.branch == invite.top_via.branch
    assert cancel.headers.get("To") == "<sip:bob@b.example>"  # §9.1: tags as in the INVITE
    assert uac.local_cseq == 1
    with pytest.raises(ValueError):
        uac.request("CANCEL", via())


def test_a_challenge_after_ringing_ends_the_early_dialog_so_the_retry_starts_afresh() -> None:
    uac = alice()
    invite = through_proxies(uac.request("INVITE", via(), ALICE_CONTACT), (P1,))
    uas = Dialog.uas(invite, "ub")
    uac.receive_response(answer(uas, invite, 180))
    uac.receive_response(answer(uas, invite, 407, None))
    retry = wire(uac.request("INVITE", via(), ALICE_CONTACT))
    assert retry.uri == "sip:bob@b.example"
    assert retry.headers.get("To") == "<sip:bob@b.example>"
    assert "Route" not in retry.headers
    received = through_proxies(retry, (P1,))
    uac.receive_response(answer(Dialog.uas(received, "ub2"), received, 200))
    assert uac.id == ("call-1@alice", "ua", "ub2")
    assert list(uac.route_set) == [P1]


def test_a_request_below_the_last_cseq_is_refused_with_500() -> None:
    uac, uas, _ = established()
    info, late = uac.request("INFO", via()), uac.request("INFO", via())
    uas.receive_request(wire(late))
    with pytest.raises(DialogError) as refused:
        uas.receive_request(wire(info))
    assert refused.value.status == 500
    assert isinstance(refused.value, RemoteProtocolError)  # the peer's fault (sip/errors.py)
    assert uas.remote_cseq == 3
    uas.receive_request(wire(uac.request("ACK", via(), cseq=1)))  # an ACK keeps its INVITE's
    uas.receive_request(wire(uac.request("BYE", via())))
    assert uas.remote_cseq == 4


def test_the_first_request_from_the_callee_sets_its_cseq_whatever_the_number() -> None:
    uac, uas, _ = established()
    uas.local_cseq = 41
    uac.receive_request(wire(uas.request("BYE", via())))
    assert uac.remote_cseq == 42


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_a_target_refresh_moves_the_remote_target_both_ways_but_not_the_route_set(
    method: str,
) -> None:
    uac, uas, _ = established()
    refresh = wire(uac.request(method, via(), "<sip:alice@192.0.2.9:5062>"))
    uas.receive_request(refresh)
    assert uas.remote_target == "sip:alice@192.0.2.9:5062"
    ok = answer(uas, refresh, 200, "<sip:bob@198.51.100.7>", record_routes=["<sip:p3;lr>"])
    uac.receive_response(ok)
    assert uac.remote_target == "sip:bob@198.51.100.7"
    assert list(uac.route_set) == [P1, P2]
    assert list(uas.route_set) == [P2, P1]
    assert wire(uas.request("BYE", via())).uri == "sip:alice@192.0.2.9:5062"


def test_a_refused_reinvite_or_a_plain_request_leaves_the_target() -> None:
    uac, uas, _ = established()
    reinvite = wire(uac.request("INVITE", via(), "<sip:alice@192.0.2.9>"))
    uas.receive_request(reinvite)
    uac.receive_response(answer(uas, reinvite, 488, "<sip:bob@198.51.100.7>"))
    info = uac.request("INFO", via())
    info.headers.add("Contact", "<sip:alice@192.0.2.10>")
    uas.receive_request(wire(info))
    assert uac.remote_target == "sip:bob@198.51.100.2:5070;transport=udp"
    assert uas.remote_target == "sip:alice@192.0.2.9"  # from the re-INVITE itself (§12.2.2)


def test_ringing_makes_an_early_dialog_that_the_answer_recomputes() -> None:
    uac = alice()
    invite = through_proxies(uac.request("INVITE", via(), ALICE_CONTACT), (P1, P2))
    uas = Dialog.uas(invite, "ub1")
    uac.receive_response(wire(response_for(invite, 183)))  # no To tag: no dialog (§12.1)
    assert (uac.remote_tag, uac.remote) == (None, "<sip:bob@b.example>")
    uac.receive_response(answer(uas, invite, 180, "<sip:bob@198.51.100.3>", [P2]))
    assert (uac.remote_tag, uac.remote_target, list(uac.route_set)) == (
        "ub1", "sip:bob@198.51.100.3", [P2])
    other = Dialog.uas(invite, "ub2")  # a forking proxy's other branch answers
    uac.receive_response(answer(other, invite, 200))
    assert uac.id == ("call-1@alice", "ua", "ub2")
    assert uac.remote == "<sip:bob@b.example>;tag=ub2"
    assert uac.remote_target == "sip:bob@198.51.100.2:5070;transport=udp"
    assert list(uac.route_set) == [P1, P2]


def test_each_side_knows_the_others_messages_by_dialog_id() -> None:
    uac, uas, invite = established()
    assert uac.id == ("call-1@alice", "ua", "ub")
    assert uas.id == ("call-1@alice", "ub", "ua")
    bye = wire(uac.request("BYE", via()))
    assert uas.matches(bye)
    assert not uac.matches(bye)  # tags trade places: that is a request from Alice
    assert uac.matches(wire(response_for(bye, 200)))
    assert uac.matches(wire(uas.request("INFO", via())))
    stranger = Dialog.uas(invite, "someone-else")
    assert not stranger.matches(bye)
    elsewhere = wire(uac.request("BYE", via()))
    elsewhere.headers.set("Call-ID", "call-2@alice")
    assert not uas.matches(elsewhere)


def test_a_contact_that_does_not_parse_keeps_the_target_that_worked() -> None:
    uac, uas, _ = established()
    reinvite = uac.request("INVITE", via(), "<sip:alice@192.0.2.1:5060>")
    reinvite.headers.set("Contact", "<sip:alice@bad host>")
    uas.receive_request(reinvite)
    assert uas.remote_target == "sip:alice@192.0.2.1:5060"
