"""Our Contact on a leg whose dialog is SIPS (RFC 3261 §8.1.1.8, §12.1.1): a carrier
that sends a `sips:` Request-URI over TLS gets a `sips:` Contact in our answers, and a
`sips:` target gets one in our INVITE. On the fake link (tests/unit/b2bua/net.py), with
the carrier and a PBX whose addresses say TLS."""

from __future__ import annotations

from calltrackd.b2bua.legs import is_sips
from calltrackd.sip.endpoint import Address
from tests.unit.b2bua.net import DID, Net, Peer, settings

CARRIER_TLS = Address("tls", "10.0.0.1", 5061)
PBX_TLS = Address("tls", "10.0.1.1", 5061)


def tls_net(*targets: str) -> Net:
    net = Net(settings(*targets))
    net.carrier = Peer(net, CARRIER_TLS)
    net.pbx_a = Peer(net, PBX_TLS, net.pbx_a.sdp)
    net.peers[(CARRIER_TLS.host, CARRIER_TLS.port)] = net.carrier
    net.peers[(PBX_TLS.host, PBX_TLS.port)] = net.pbx_a
    return net


def contacts(peer: Peer, status: int) -> list[str]:
    return [r.headers.get("Contact") or "" for r in peer.responses if r.status == status]


def test_sips_request_uri_over_tls_gets_a_sips_contact_in_every_answer() -> None:
    net = tls_net("sip:10.0.1.2:5060")  # the target over UDP: its leg stays sip:
    net.carrier.invite(uri=f"sips:{DID}@127.0.0.1:5061")
    invite = net.pbx_b.last("INVITE")
    assert (invite.headers.get("Contact") or "").startswith("<sip:calltrackd@")
    net.pbx_b.respond(180)
    net.pbx_b.respond(200)
    assert net.carrier.statuses() == [100, 180, 200]
    for status in (180, 200):
        [contact] = contacts(net.carrier, status)
        assert contact.startswith("<sips:calltrackd@") and "transport=" not in contact
    # a target refresh on the A leg later (the callee's re-INVITE relayed) keeps it SIPS
    net.pbx_b.send("INVITE", net.pbx_b.sdp)
    reinvite = [r for r in net.carrier.requests if r.method == "INVITE"][-1]
    assert (reinvite.headers.get("Contact") or "").startswith("<sips:calltrackd@")
    net.carrier.send("BYE")
    assert net.carrier.statuses("BYE") == [200]


def test_sip_request_uri_over_tls_keeps_a_sip_contact_with_transport_tls() -> None:
    net = tls_net("sip:10.0.1.2:5060")
    net.carrier.invite()
    net.pbx_b.respond(200)
    [contact] = contacts(net.carrier, 200)
    assert contact.startswith("<sip:calltrackd@") and contact.endswith(";transport=tls>")


def test_sips_record_route_from_the_carrier_makes_the_contact_sips() -> None:
    net = tls_net("sip:10.0.1.2:5060")
    net.carrier.invite(extra={"Record-Route": "<sips:10.0.0.1:5061;lr>"})
    net.pbx_b.respond(200)
    [contact] = contacts(net.carrier, 200)
    assert contact.startswith("<sips:calltrackd@")


def test_sips_target_gets_a_sips_contact_in_our_invite() -> None:
    net = tls_net(f"sips:{PBX_TLS.host}:{PBX_TLS.port}")
    net.carrier.invite()  # the caller's leg: sip: over TLS
    invite = net.pbx_a.last("INVITE")
    assert invite.uri.startswith(f"sips:{DID}@{PBX_TLS.host}")
    assert (invite.headers.get("Contact") or "").startswith("<sips:calltrackd@")
    net.pbx_a.respond(200)
    [contact] = contacts(net.carrier, 200)
    assert contact.startswith("<sip:calltrackd@")  # each leg its own


def test_sips_request_uri_over_udp_keeps_sip_contact() -> None:
    """A sips: Request-URI that did not come over TLS: a sips: Contact would send the
    peer to a TLS port for the UDP leg, so it stays sip: (transport=udp)."""
    net = Net(settings("sip:10.0.1.2:5060"))
    net.carrier.invite(uri=f"sips:{DID}@127.0.0.1:5061")
    net.pbx_b.respond(200)
    [contact] = contacts(net.carrier, 200)
    assert contact.endswith(";transport=udp>")


def test_is_sips_reads_uris_and_name_addrs() -> None:
    assert is_sips("sips:a@b") and is_sips("SIPS:a@b") and is_sips("<sips:p;lr>")
    assert is_sips('"Bob" <sips:bob@b>;tag=1')
    assert not is_sips("sip:a@b") and not is_sips("<sip:p;lr>") and not is_sips("")
