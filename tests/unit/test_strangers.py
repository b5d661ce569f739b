"""Strangers cost nothing: the gate's verdicts before parsing (token buckets, carriers,
trusted sources, peers) and the transaction layer's stateless answers after it."""

from __future__ import annotations

import ipaddress

from calltrackd.sip.endpoint import Address, RequestReceived, TransactionLayer
from calltrackd.transport.strangers import StrangerGate, StrangerSettings
from tests.unit.sip.test_message import message

CARRIER = "198.51.100.7"
STRANGER = Address("udp", "203.0.113.9", 5060)


def gate(**settings: object) -> StrangerGate:
    dialogs = {("dlg-call@x", "ourtag")}
    return StrangerGate(lambda host: host == CARRIER,
                        lambda call_id, tag: (call_id, tag) in dialogs,
                        StrangerSettings(**settings))  # type: ignore[arg-type]


def invite(*extra: str, to: str = "<sip:+74990000001@192.0.2.1>",
           call_id: str = "x@y", method: str = "INVITE") -> bytes:
    return message(*extra, length="0", start=f"{method} sip:+74990000001@192.0.2.1 SIP/2.0") \
        .replace(b"CSeq: 1 OPTIONS", f"CSeq: 1 {method}".encode()) \
        .replace(b"To: <sip:bob@example.com>", f"To: {to}".encode()) \
        .replace(b"Call-ID: test-call@192.0.2.1", f"Call-ID: {call_id}".encode())


def layer_with(g: StrangerGate) -> TransactionLayer:
    layer = TransactionLayer()
    layer.screen = g.screen
    return layer


# -- before parsing ------------------------------------------------------------------------


def test_carriers_trusted_sources_and_peers_are_trusted_and_never_limited() -> None:
    g = gate(rate=1, burst=1, trusted=(ipaddress.ip_network("192.0.2.0/24"),))
    g.peer("10.1.1.1", 0.0)
    for host in (CARRIER, "192.0.2.50", "10.1.1.1"):
        assert {g.admit(host, 0.0) for _ in range(1000)} == {"trusted"}
    assert g.counts["rate_limited"] == 0


def test_a_stranger_gets_its_burst_then_its_rate() -> None:
    g = gate(rate=10, burst=20, total_rate=0)
    verdicts = [g.admit("203.0.113.9", 0.0) for _ in range(100)]
    assert verdicts.count("stranger") == 20 and verdicts.count("limited") == 80
    assert g.admit("203.0.113.9", 0.05) == "limited"  # half a token
    assert g.admit("203.0.113.9", 0.15) == "stranger"
    assert g.counts["rate_limited"] == 81


def test_all_strangers_together_share_one_bucket() -> None:
    """Spoofed sources each get a bucket of their own; the shared one bounds them."""
    g = gate(rate=10, burst=20, total_rate=50)
    verdicts = [g.admit(f"203.0.{i // 250}.{i % 250}", 0.0) for i in range(1000)]
    assert verdicts.count("stranger") == 50


def test_one_source_over_its_rate_does_not_use_up_the_others_share() -> None:
    g = gate(rate=10, burst=5, total_rate=10)
    for _ in range(100):
        g.admit("203.0.113.9", 0.0)
    assert [g.admit(f"203.0.113.{i}", 0.0) for i in range(10, 15)] == ["stranger"] * 5


def test_a_peer_is_forgotten_after_its_ttl() -> None:
    g = gate(peer_ttl=100.0, rate=1, burst=1)
    g.peer("10.1.1.1", 0.0)
    assert g.admit("10.1.1.1", 99.0) == "trusted"
    assert g.admit("10.1.1.1", 101.0) == "stranger"


def test_a_reload_changes_who_is_trusted() -> None:
    carriers = {CARRIER}
    g = StrangerGate(lambda host: host in carriers)
    assert g.admit("203.0.113.9", 0.0) == "stranger"
    carriers.add("203.0.113.9")
    assert g.admit("203.0.113.9", 0.0) == "trusted"
    g.configure(StrangerSettings(trusted=(ipaddress.ip_network("2001:db8::/32"),)))
    assert g.admit("2001:db8::1", 0.0) == "trusted"


# -- after parsing -------------------------------------------------------------------------


def test_drop_mode_sends_nothing_and_keeps_no_transaction() -> None:
    g = gate(udp="drop")
    layer = layer_with(g)
    for data in (invite(), invite(method="OPTIONS"), invite(method="BYE"),
                 invite(method="CANCEL"), invite("Max-Forwards: x")):
        assert [type(e).__name__ for e in layer.receive(data, STRANGER, 0.0, True)] in (
            [], ["MalformedMessage"])
    assert layer.transmits() == [] and layer.transaction_count == 0
    assert g.counts["dropped"] == 5


def test_reject_mode_answers_one_stateless_403_and_never_retransmits() -> None:
    g = gate(udp="reject")
    layer = layer_with(g)
    assert layer.receive(invite(), STRANGER, 0.0, True) == []
    ((first, dest),) = layer.transmits()
    assert first.startswith(b"SIP/2.0 403 ") and dest == Address("udp", "203.0.113.9", 5060)
    assert layer.transaction_count == 0 and layer.get_timer() is None
    assert layer.handle_timer(64.0) == [] and layer.transmits() == []
    # its retransmission gets the same answer, To tag included (RFC 3261 §8.2.7)
    layer.receive(invite(), STRANGER, 0.5, True)
    ((again, _),) = layer.transmits()
    assert again == first and b";tag=" in again
    assert g.counts["rejected"] == 2


def test_reject_mode_answers_options_200_and_never_an_ack() -> None:
    g = gate(udp="reject")
    layer = layer_with(g)
    layer.receive(invite(method="OPTIONS"), STRANGER, 0.0, True)
    ((out, _),) = layer.transmits()
    assert out.startswith(b"SIP/2.0 200 ")
    layer.receive(invite(method="ACK", to="<sip:a@b>;tag=zz"), STRANGER, 0.0, True)
    assert layer.transmits() == []
    assert g.counts["answered"] == 1 and g.counts["dropped"] == 1


def test_tcp_rejects_by_default_while_udp_drops() -> None:
    g = gate()
    layer = layer_with(g)
    layer.receive(invite(), STRANGER, 0.0, True)
    assert layer.transmits() == []
    tcp = Address("tcp", "203.0.113.9", 40000)
    layer.receive(invite(), tcp, 0.0, True)
    ((out, dest),) = layer.transmits()
    assert out.startswith(b"SIP/2.0 403 ") and dest == tcp


def test_in_dialog_requests_of_our_dialogs_pass_from_any_address() -> None:
    """A PBX may send its BYE from another address than the one we sent the INVITE to."""
    layer = layer_with(gate())
    bye = invite(method="BYE", to="<sip:a@b>;tag=ourtag", call_id="dlg-call@x")
    (event,) = layer.receive(bye, STRANGER, 0.0, True)
    assert isinstance(event, RequestReceived) and event.request.method == "BYE"
    unknown = invite(method="BYE", to="<sip:a@b>;tag=other", call_id="dlg-call@x")
    assert layer.receive(unknown, STRANGER, 0.0, True) == []
    assert layer.transmits() == []


def test_malformed_from_a_stranger_gets_400_only_in_reject_mode() -> None:
    bad = invite("Max-Forwards: \u00b2")
    drop, reject = layer_with(gate(udp="drop")), layer_with(gate(udp="reject"))
    drop.receive(bad, STRANGER, 0.0, True)
    reject.receive(bad, STRANGER, 0.0, True)
    assert drop.transmits() == []
    ((out, _),) = reject.transmits()
    assert out.startswith(b"SIP/2.0 400 ")


def test_one_notice_per_source_per_minute() -> None:
    g = gate()
    layer = layer_with(g)
    for i in range(50):
        layer.receive(invite(call_id=f"c{i}"), STRANGER, float(i), True)
    assert [(n.source, n.method, n.action) for n in g.take_notices()] == [
        ("203.0.113.9", "INVITE", "dropped")]
    layer.receive(invite(), STRANGER, 61.0, True)
    assert len(g.take_notices()) == 1


# -- a flood goes to the kernel --------------------------------------------------------------


def flood(g: StrangerGate, host: str, seconds: float, per_second: int = 1000) -> None:
    for i in range(int(seconds * per_second)):
        now = i / per_second
        if g.blocked.get(host, -1.0) > now:
            continue  # what the transport drops on its own before asking the gate
        g.admit(host, now)


def test_a_sustained_flood_is_handed_to_the_kernel_and_back_after_its_block() -> None:
    g = gate(rate=10, burst=20, total_rate=0)
    flood(g, "203.0.113.9", 0.2)
    assert g.kernel == {}  # a moment over its rate: the buckets suffice
    flood(g, "203.0.113.9", 1.0)
    assert list(g.kernel) == ["203.0.113.9"] and g.kernel_changed
    g.expire_kernel(10.0)
    assert "203.0.113.9" in g.kernel
    g.expire_kernel(40.0)
    assert g.kernel == {}


def test_a_source_we_send_requests_to_leaves_the_kernel_list() -> None:
    g = gate()
    flood(g, "203.0.113.9", 4.0)
    g.kernel_changed = False
    g.peer("203.0.113.9", 5.0)
    assert g.kernel == {} and g.kernel_changed


def test_kernel_filter_drops_the_listed_sources_only() -> None:
    import socket

    from calltrackd.transport import bpf

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(0.5)
        bpf.drop_sources(rx, ["127.0.0.2"])
        got = []
        for src in ("127.0.0.2", "127.0.0.3"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.bind((src, 0))
                tx.sendto(src.encode(), rx.getsockname())
        try:
            while True:
                got.append(rx.recv(100))
        except TimeoutError:
            pass
        assert got == [b"127.0.0.3"]
        bpf.drop_sources(rx, [])  # detached: everyone again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.bind(("127.0.0.2", 0))
            tx.sendto(b"again", rx.getsockname())
        assert rx.recv(100) == b"again"


async def test_the_transport_serves_carriers_at_once_and_strangers_a_few_per_turn() -> None:
    import asyncio

    from calltrackd.transport import stack as stack_module
    from calltrackd.transport.stack import SipStack

    stack = SipStack(TransactionLayer())
    stack.use_gate(StrangerGate(lambda host: host == CARRIER,
                                settings=StrangerSettings(rate=0, total_rate=0)))
    seen: list[bytes] = []
    stack.taps.append(lambda direction, data: seen.append(data) if direction == "in" else None)
    for i in range(20):
        stack.datagram(b"stranger %d" % i, Address("udp", "203.0.113.9", 5060))
    stack.datagram(b"carrier", Address("udp", CARRIER, 5060))
    assert seen == [b"carrier"]  # the strangers' wait in their queue
    await asyncio.sleep(0)
    assert len(seen) == 1 + stack_module.STRANGERS_PER_TURN
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen[1:] == [b"stranger %d" % i for i in range(20)]
