"""The ACK for our 2xx belongs to the caller: one from a stranger who copied the dialog's
identifiers (Call-ID, tags, CSeq) neither reaches the callee nor stops our 2xx reaching
the caller; an ACK from another address of the caller's carrier (carriers send from
several SBCs) does both. The ACK for our 4xx stops it only from the INVITE's source.
On the fake link of net.py: the real engine and layers."""

from __future__ import annotations

import ipaddress

from calltrackd.config import Carrier, Settings, SipSettings
from calltrackd.sip.endpoint import Address
from calltrackd.sip.message import Headers, Request, Via
from tests.unit.b2bua.net import CARRIER, ENGINE, SDP, Net, settings

STRANGER = Address("udp", "192.0.2.66", 5060)
SBC_2 = Address("udp", "10.0.0.2", 5060)  # the carrier's second SBC (10.0.0.0/24)
EVIL_SDP = SDP.replace(b"10.0.0.1", b"192.0.2.66")


class CarrierAcksLost:
    """The link loses the carrier's own ACKs while `on`."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, data: bytes, dest: Address) -> bool:
        return self.on and dest == ENGINE and data.startswith(b"ACK ")


def oks_to_carrier(net: Net) -> int:
    """The 2xx to the carrier's INVITE the engine has sent, retransmissions included."""
    return sum(1 for data, dest in net.engine_sent
               if dest == CARRIER and data.startswith(b"SIP/2.0 200 ")
               and b"\r\nCSeq: 1 INVITE\r\n" in data)


def ack_from(net: Net, source: Address, body: bytes) -> None:
    """An ACK with every identifier of the carrier's dialog, sent from `source`."""
    dialog = net.carrier.dialog
    assert dialog is not None
    via = Via.own("udp", source.host, source.port, "z9hG4bKcopied")
    ack = dialog.request("ACK", via, None, body, "application/sdp", cseq=1)
    events = net.stack.layer.receive(ack.to_bytes(), source, net.clock.now)
    net.engine.handle(events)
    net.pump()


def late_offer_answered(net: Net) -> None:
    """A late-offer call the PBX answered: the callee's ACK waits for the caller's, which
    carries the SDP answer."""
    net.carrier.answer_ack_body = SDP
    net.carrier.invite(body=b"")
    net.pbx_a.respond(200)
    assert net.carrier.statuses()[-1] == 200
    assert oks_to_carrier(net) == 1 and net.pbx_a.acks == []


def test_a_strangers_ack_is_counted_and_our_2xx_goes_on_until_the_callers_own() -> None:
    lost = CarrierAcksLost()
    net = Net(loss=lost)
    late_offer_answered(net)
    ack_from(net, STRANGER, EVIL_SDP)
    assert net.engine.dialog_rejects == {("source", "ACK"): 1}
    assert net.pbx_a.acks == []  # the stranger's SDP went nowhere
    net.advance(2.0)  # Timer G: T1 and 2*T1 later, the caller's ACKs still lost
    assert oks_to_carrier(net) == 3
    lost.on = False
    net.advance(2.0)  # the 2xx 4*T1 later gets the caller's ACK through
    assert oks_to_carrier(net) == 4
    # the callee's ACK carries the caller's answer (again for each of the callee's 2xx
    # retransmissions while it waited)
    assert net.pbx_a.acks and all(a.body == SDP for a in net.pbx_a.acks)
    net.advance(40.0)  # no more 2xx, and no Timer L: the call is up
    assert oks_to_carrier(net) == 4
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("answered", 200, "caller")
    assert cdr.talk_seconds == 44.0


def test_an_ack_from_another_sbc_of_the_callers_carrier_stops_our_2xx() -> None:
    net = Net(Settings(sip=SipSettings(), trackers=settings().trackers, carriers=(
        Carrier("carrier", (ipaddress.ip_network("10.0.0.0/24"),)),)), loss=CarrierAcksLost())
    late_offer_answered(net)
    ack_from(net, SBC_2, SDP)
    assert net.engine.dialog_rejects == {}
    assert [a.body for a in net.pbx_a.acks] == [SDP]
    net.advance(40.0)  # past Timer L (64*T1): acknowledged, so the call stays up
    assert oks_to_carrier(net) == 1
    assert net.carrier.methods() == [] and net.engine.active_calls == 1


def refusals_to_carrier(net: Net) -> int:
    """The 486 to the carrier's INVITE the engine has sent, retransmissions included."""
    return sum(1 for data, dest in net.engine_sent
               if dest == CARRIER and data.startswith(b"SIP/2.0 486 "))


def test_a_forged_ack_for_our_4xx_is_counted_and_the_4xx_goes_on_until_the_callers_own(
) -> None:
    """The ACK for a non-2xx matches the INVITE's transaction by its Via: one copying the
    carrier's Via from another host (even another SBC of the carrier: that ACK is
    hop-by-hop, it comes from the hop that sent the INVITE) must not stop our 486."""
    lost = CarrierAcksLost()
    net = Net(Settings(sip=SipSettings(), trackers=settings().trackers, carriers=(
        Carrier("carrier", (ipaddress.ip_network("10.0.0.0/24"),)),)), loss=lost)
    invite = net.carrier.invite()
    net.pbx_a.respond(486)
    assert net.carrier.statuses()[-1] == 486 and refusals_to_carrier(net) == 1
    ack = Request("ACK", invite.uri, Headers())
    ack.headers.add("Via", invite.headers.values("Via")[0])
    resp = net.carrier.responses[-1]
    for name in ("From", "To", "Call-ID"):
        ack.headers.add(name, resp.headers.get(name) or "")
    ack.headers.add("CSeq", "1 ACK")
    ack.headers.add("Max-Forwards", "70")
    for source in (STRANGER, SBC_2, Address("udp", CARRIER.host, CARRIER.port + 1)):
        net.engine.handle(net.stack.layer.receive(ack.to_bytes(), source, net.clock.now))
    assert net.engine.dialog_rejects == {("source", "ACK"): 3}
    net.advance(2.0)  # Timer G: T1 and 2*T1 later, the caller's ACKs still lost
    assert refusals_to_carrier(net) == 3
    lost.on = False
    net.advance(2.0)  # the 486 4*T1 later gets the caller's ACK through
    assert refusals_to_carrier(net) == 4
    net.advance(40.0)  # past Timer H: acknowledged, nothing more
    assert refusals_to_carrier(net) == 4
    assert (net.hooks.cdr.outcome, net.hooks.cdr.sip_code) == ("busy", 486)
