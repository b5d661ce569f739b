"""Two transaction layers talking through a fake link with a manual clock (h11-style
pairing): a UAC core against a UAS core, with and without loss. No sockets, no mocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from calltrackd.sip.endpoint import (
    AckReceived,
    Address,
    Event,
    ForeignAck,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTimeout,
    new_branch,
)
from calltrackd.sip.message import Headers, Request, Response, parse_message, response_for
from calltrackd.sip.transaction import ClientInviteTransaction, ServerInviteTransaction

UAC = Address("udp", "127.0.0.1", 5061)
UAS = Address("udp", "127.0.0.1", 5060)


@dataclass
class Link:
    """Carries datagrams between the two layers; `drop` decides which are lost."""

    uac: TransactionLayer = field(default_factory=TransactionLayer)
    uas: TransactionLayer = field(default_factory=TransactionLayer)
    now: float = 0.0
    sent: int = 0
    drop_every: int = 0  # drop every n-th datagram (0: none)
    uac_events: list[Event] = field(default_factory=list)
    uas_events: list[Event] = field(default_factory=list)

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst, src_addr, events in ((self.uac, self.uas, UAC, self.uas_events),
                                               (self.uas, self.uac, UAS, self.uac_events)):
                for data, _dest in src.transmits():
                    moved = True
                    self.sent += 1
                    if self.drop_every and self.sent % self.drop_every == 0:
                        continue
                    events.extend(dst.receive(data, src_addr, self.now))

    def advance(self, until: float) -> None:
        """Run both layers' timers up to `until`, pumping after each step."""
        while True:
            deadlines = [t for t in (self.uac.get_timer(), self.uas.get_timer()) if t]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            self.uac_events.extend(self.uac.handle_timer(self.now))
            self.uas_events.extend(self.uas.handle_timer(self.now))
            self.pump()
        self.now = until


def invite(method: str = "INVITE", cseq: int = 1, to_tag: str | None = None) -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5061;branch={new_branch()};rport")
    h.add("Max-Forwards", "70")
    h.add("From", "<sip:+79161234567@127.0.0.1>;tag=uac")
    h.add("To", "<sip:+74990000001@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""))
    h.add("Call-ID", "layer-1@test")
    h.add("CSeq", f"{cseq} {method}")
    h.add("Contact", "<sip:uac@127.0.0.1:5061>")
    return Request(method, "sip:+74990000001@127.0.0.1", h, b"v=0\r\n" if method == "INVITE"
                   else b"")


def answer(link: Link, status: int, txn: ServerInviteTransaction) -> Response:
    resp = response_for(txn.request, status)
    resp.headers.set("To", (txn.request.headers.get("To") or "") + ";tag=uas")
    link.uas.respond(txn, resp, link.now)
    link.pump()
    return resp


def server_txn(link: Link) -> ServerInviteTransaction:
    got = [e for e in link.uas_events if isinstance(e, RequestReceived)]
    assert got, link.uas_events
    txn = got[-1].transaction
    assert isinstance(txn, ServerInviteTransaction)
    return txn


def statuses(link: Link) -> list[int]:
    return [e.response.status for e in link.uac_events if isinstance(e, ResponseReceived)]


def test_call_setup_and_ack_for_2xx_stops_retransmission() -> None:
    link = Link()
    req = invite()
    ctxn = link.uac.send_request(req, UAS, link.now)
    link.pump()
    stxn = server_txn(link)
    answer(link, 180, stxn)
    link.now = 1.0
    ok = answer(link, 200, stxn)
    assert statuses(link) == [180, 200]
    assert isinstance(ctxn, ClientInviteTransaction)
    ack = invite("ACK", to_tag="uas")
    link.uac.send_ack(ctxn, ack)
    link.pump()
    acks = [e for e in link.uas_events if isinstance(e, AckReceived)]
    assert len(acks) == 1 and acks[0].transaction is stxn  # matched by Call-ID and CSeq
    sent_before = link.sent
    link.advance(40.0)
    # no 2xx retransmissions after the ACK; both sides forgot the transactions
    assert link.sent == sent_before
    assert link.uac.transaction_count == 0 and link.uas.transaction_count == 0
    assert ok.status == 200


def test_an_ack_for_our_2xx_from_another_host_leaves_it_retransmitted() -> None:
    """The ACK for a 2xx is matched by Call-ID and CSeq alone (it has a branch of its own):
    one from a host that is not the INVITE's source, a stranger copying the dialog's ids,
    must not stop our 2xx reaching the caller. Only the TU may admit such an ACK."""
    link = Link()
    link.uac.send_request(invite(), UAS, link.now)
    link.pump()
    stxn = server_txn(link)
    answer(link, 200, stxn)
    ack = invite("ACK", to_tag="uas").to_bytes()
    for stranger in (Address("udp", "127.0.0.2", 5061), Address("tcp", "127.0.0.1", 5061)):
        events = link.uas.receive(ack, stranger, link.now)
        assert [type(e) for e in events] == [AckReceived]
        assert isinstance(events[0], AckReceived) and events[0].transaction is stxn
    assert not stxn.acked
    sent = link.uas.retransmissions
    for t in (0.5, 1.5, 3.5):  # Timer G; the datagrams are not delivered
        link.uas.handle_timer(t)
    assert link.uas.retransmissions == sent + 3  # 2xx at T1, 2*T1, 4*T1
    link.uas.ack_received(stxn)  # the TU admits an ACK from elsewhere
    link.uas.handle_timer(7.5)
    assert stxn.acked and link.uas.retransmissions == sent + 3
    # the INVITE's own source (another port: a TCP peer reconnects) stops it as well
    other = Link()
    other.uac.send_request(invite(), UAS, other.now)
    other.pump()
    answer(other, 200, server_txn(other))
    other.uas.receive(ack, Address("udp", "127.0.0.1", 6000), other.now)
    assert server_txn(other).acked


def non_2xx_ack(req: Request) -> bytes:
    """The ACK for a non-2xx to `req` (§17.1.1.3): its Via (branch and sent-by), so it
    matches the INVITE's server transaction; anyone who saw the INVITE can write it."""
    h = Headers()
    h.add("Via", req.headers.values("Via")[0])
    for name in ("From", "Call-ID", "Max-Forwards"):
        h.add(name, req.headers.get(name) or "")
    h.add("To", (req.headers.get("To") or "") + ";tag=uas")
    h.add("CSeq", "1 ACK")
    return Request("ACK", req.uri, h).to_bytes()


def test_an_ack_for_our_4xx_from_elsewhere_leaves_it_retransmitted() -> None:
    """The ACK for a non-2xx matches the INVITE's transaction by its Via alone (§17.2.3):
    one from another host, another transport or (over UDP) another port is not the hop
    the INVITE came from, a stranger copying the Via. It is handed to the TU to count and
    the 4xx goes on, Timer G, until the INVITE's source ACKs it."""
    link = Link()
    req = invite()
    link.uac.send_request(req, UAS, link.now)
    link.pump()
    stxn = server_txn(link)
    link.uas.respond(stxn, response_for(req, 486), link.now)
    assert len(link.uas.transmits()) == 1  # the 486, lost with the UAC's own ACK
    ack = non_2xx_ack(req)
    for stranger in (Address("udp", "127.0.0.2", 5061), Address("tcp", "127.0.0.1", 5061),
                     Address("udp", "127.0.0.1", 6000)):
        events = link.uas.receive(ack, stranger, link.now)
        assert len(events) == 1 and isinstance(events[0], ForeignAck), events
        assert events[0].transaction is stxn and events[0].source == stranger
    assert not stxn.terminated
    sent = link.uas.retransmissions
    for t in (0.5, 1.5, 3.5):  # Timer G; the datagrams are not delivered
        link.uas.handle_timer(t)
        assert [d.split(b" ", 2)[1] for d, _ in link.uas.transmits()] == [b"486"]
    assert link.uas.retransmissions == sent + 3
    # the INVITE's source (host, transport and port) stops it: Confirmed, then Timer I
    assert link.uas.receive(ack, UAC, link.now) == []
    link.uas.handle_timer(7.5)
    assert link.uas.retransmissions == sent + 3 and link.uas.transmits() == []
    link.uas.handle_timer(9.0)  # T4 (5 s) after the ACK
    assert stxn.terminated and link.uas.transaction_count == 0
    assert not any(isinstance(e, TransactionTimeout) for e in link.uas.handle_timer(40.0))


def test_an_ack_for_our_4xx_over_tcp_may_come_from_another_port() -> None:
    """Over TCP a peer whose connection broke sends its ACK over a new one, from another
    port: the INVITE's host and transport are enough."""
    layer = TransactionLayer()
    req = invite()
    source = Address("tcp", "127.0.0.1", 40001)
    (got,) = layer.receive(req.to_bytes(), source, 0.0)
    assert isinstance(got, RequestReceived) and isinstance(got.transaction,
                                                           ServerInviteTransaction)
    stxn = got.transaction
    layer.respond(stxn, response_for(req, 404), 0.0)
    assert isinstance(layer.receive(non_2xx_ack(req), Address("tcp", "127.0.0.2", 40001),
                                    0.0)[0], ForeignAck)
    assert layer.receive(non_2xx_ack(req), Address("tcp", "127.0.0.1", 40002), 0.0) == []
    layer.handle_timer(0.0)  # Timer I is 0 over a reliable transport
    assert stxn.terminated


def test_every_other_datagram_lost_still_completes() -> None:
    link = Link(drop_every=2)
    req = invite()
    ctxn = link.uac.send_request(req, UAS, link.now)
    link.pump()
    link.advance(0.6)  # Timer A brings the INVITE across
    stxn = server_txn(link)
    answer(link, 200, stxn)
    link.advance(5.0)  # Timer G brings the 2xx across
    assert 200 in statuses(link)
    assert isinstance(ctxn, ClientInviteTransaction)
    link.uac.send_ack(ctxn, invite("ACK", to_tag="uas"))
    link.pump()
    link.advance(20.0)  # the 2xx is retransmitted until one ACK gets through
    assert any(isinstance(e, AckReceived) for e in link.uas_events)
    assert link.uac.retransmissions > 0 and link.uas.retransmissions > 0
    # a BYE over the same lossy link
    bye = invite("BYE", cseq=2, to_tag="uas")
    link.uac.send_request(bye, UAS, link.now)
    link.pump()
    link.advance(link.now + 2.0)
    got = [e for e in link.uas_events if isinstance(e, RequestReceived)
           and e.request.method == "BYE"]
    assert len(got) == 1  # retransmissions were absorbed by the server transaction
    link.uas.respond(got[0].transaction, response_for(got[0].request, 200), link.now)
    link.pump()
    link.advance(link.now + 10.0)
    assert [s for s in statuses(link) if s == 200][-1] == 200
    assert not any(isinstance(e, TransactionTimeout) and e.timer == "F"
                   for e in link.uac_events)


def test_cancel_is_matched_to_its_invite() -> None:
    link = Link()
    req = invite()
    link.uac.send_request(req, UAS, link.now)
    link.pump()
    stxn = server_txn(link)
    answer(link, 180, stxn)
    h = Headers()
    h.add("Via", req.headers.values("Via")[0])
    for name in ("From", "To", "Call-ID"):
        h.add(name, req.headers.get(name) or "")
    h.add("CSeq", "1 CANCEL")
    h.add("Max-Forwards", "70")
    link.uac.send_request(Request("CANCEL", req.uri, h), UAS, link.now)
    link.pump()
    cancels = [e for e in link.uas_events if isinstance(e, RequestReceived)
               and e.request.method == "CANCEL"]
    assert len(cancels) == 1 and cancels[0].cancels is stxn


def test_via_received_and_rport_are_stamped_and_responses_follow_rport() -> None:
    layer = TransactionLayer()
    req = invite()
    source = Address("udp", "192.0.2.7", 40000)  # behind NAT: not what Via says
    events = layer.receive(req.to_bytes(), source, 0.0)
    (ev,) = events
    assert isinstance(ev, RequestReceived)
    via = ev.request.top_via
    assert via.params["received"] == "192.0.2.7" and via.params["rport"] == "40000"
    layer.respond(ev.transaction, response_for(ev.request, 100), 0.0)
    ((data, dest),) = layer.transmits()
    assert dest == source  # RFC 3581: back to the source port
    resp = parse_message(data)
    assert "rport=40000" in (resp.headers.get("Via") or "")


def test_without_rport_responses_go_to_the_via_port() -> None:
    layer = TransactionLayer()
    req = invite()
    req.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKnorport")
    (ev,) = layer.receive(req.to_bytes(), Address("udp", "127.0.0.1", 40000), 0.0)
    assert isinstance(ev, RequestReceived)
    layer.respond(ev.transaction, response_for(ev.request, 100), 0.0)
    ((_, dest),) = layer.transmits()
    assert dest == Address("udp", "127.0.0.1", 5099)


def test_tcp_responses_reuse_the_connection() -> None:
    layer = TransactionLayer()
    req = invite()
    req.headers.set("Via", "SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bKtcp")
    peer = Address("tcp", "127.0.0.1", 45678)
    (ev,) = layer.receive(req.to_bytes(), peer, 0.0)
    assert isinstance(ev, RequestReceived)
    layer.respond(ev.transaction, response_for(ev.request, 486), 0.0)
    ((_, dest),) = layer.transmits()
    assert dest == peer


def test_malformed_request_gets_400_when_a_response_can_be_formed() -> None:
    layer = TransactionLayer()
    bad = invite().to_bytes().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    (ev,) = layer.receive(bad, UAC, 0.0)
    assert isinstance(ev, MalformedMessage) and ev.answered == 400
    ((data, dest),) = layer.transmits()
    assert data.startswith(b"SIP/2.0 400 ") and dest == UAC
    (ev,) = layer.receive(b"\x00\x01garbage\r\n\r\n", UAC, 0.0)
    assert isinstance(ev, MalformedMessage) and ev.answered is None
    assert layer.transmits() == []


def test_one_timer_heap_for_many_transactions() -> None:
    layer = TransactionLayer()
    for i in range(2000):
        req = invite("OPTIONS")
        req.headers.set("Call-ID", f"many-{i}")
        layer.send_request(req, UAS, now=i * 0.001)
    layer.transmits()
    assert layer.get_timer() == 0.5  # the earliest Timer E
    events = layer.handle_timer(0.5)
    assert events == [] and len(layer.transmits()) == 1  # only the one that was due
    events = layer.handle_timer(100.0)
    assert len([e for e in events if isinstance(e, TransactionTimeout)]) == 2000
    assert layer.transaction_count == 0


def test_own_via_is_cached_as_it_would_parse() -> None:
    from calltrackd.sip.headers import Via, _via_cache

    for host, port in (("127.0.0.1", 5060), ("[2001:DB8::1]", 5062), ("Node-A.Example", 5080)):
        text = Via.own("udp", host, port, "z9hG4bKabc")
        cached = _via_cache.pop(text)
        assert cached == Via._parse(text)
        assert Via.parse(text) == cached  # and the cache keeps returning copies of it


def test_three_words_of_junk_get_no_answer() -> None:
    layer = TransactionLayer()
    events = layer.receive(b"hello there friend", Address("udp", "192.0.2.1", 5060), 0.0)
    assert [type(e) for e in events] == [MalformedMessage]
    assert list(layer.transmits()) == []


def test_bare_magic_cookie_branch_is_not_taken_as_unique() -> None:
    def options(call_id: str) -> bytes:
        return (f"OPTIONS sip:x@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n"
                f"From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:x@192.0.2.9>\r\nCall-ID: {call_id}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()

    layer = TransactionLayer()
    src = Address("udp", "192.0.2.1", 5060)
    first = layer.receive(options("one@x"), src, 0.0)
    second = layer.receive(options("two@x"), src, 0.0)
    # two requests, two transactions: the second is not swallowed as a retransmission
    assert len(first) == 1 and len(second) == 1
