"""The connection table's bounds and idle timeout (calltrackd/transport/streams.py) on a
manual clock: the real `Stream` and `Connections`, a fake loop that keeps timers and a
fake transport that records its closing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from calltrackd.sip.endpoint import Address, TransactionLayer
from calltrackd.sip.message import Headers, Request
from calltrackd.transport.stack import SipStack
from calltrackd.transport.streams import ConnectionLimits, Connections, Stream


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class Timer:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]
                 ) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.clock.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        until = self.clock.now + seconds
        while due := sorted((t for t in self.timers if not t.cancelled and t.when <= until),
                            key=lambda t: t.when):
            timer = due[0]
            self.timers.remove(timer)
            self.clock.now = max(self.clock.now, timer.when)
            timer.callback(*timer.args)
        self.clock.now = until


class Transport:
    def __init__(self, peer: tuple[str, int], stream: Stream) -> None:
        self.peer = peer
        self.stream = stream
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stream.connection_lost(None)

    abort = close


class Stack:
    """What a Stream asks of its stack: the layer's size limit, the clock, the table."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.clock = Clock()
        self.loop = Loop(self.clock)
        self.layer = TransactionLayer()
        self.busy: set[Address] = set()
        self.conns = Connections(self.clock, lambda: cast(Any, self.loop),
                                 lambda peer: peer in self.busy, limits)
        self.fed: list[bytes] = []

    def admit(self, host: str) -> str:
        return "trusted"

    def feed(self, data: bytes, source: Address, stranger: bool = False) -> None:
        self.fed.append(data)

    def accept(self, host: str, port: int) -> tuple[Stream, Transport]:
        stream = Stream(cast(Any, self), "tcp")
        transport = Transport((host, port), stream)
        stream.connection_made(cast(Any, transport))
        return stream, transport

    def connect(self, peer: Address) -> tuple[Stream, Transport]:
        stream = Stream(cast(Any, self), peer.transport, peer)
        transport = Transport((peer.host, peer.port), stream)
        stream.connection_made(cast(Any, transport))
        return stream, transport


OPTIONS = (b"OPTIONS sip:a@10.0.0.9 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKx1\r\n"
           b"From: <sip:a@10.0.0.1>;tag=1\r\nTo: <sip:b@10.0.0.9>\r\nCall-ID: c1\r\n"
           b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


def test_silent_connection_is_closed_after_the_idle_timeout_and_counted() -> None:
    stack = Stack(ConnectionLimits(idle_timeout=30.0))
    _, transport = stack.accept("10.0.0.1", 40000)
    stack.loop.advance(29.0)
    assert not transport.closed
    stack.loop.advance(1.0)
    assert transport.closed
    assert stack.conns.by_peer == {} and stack.conns.inbound == 0
    assert stack.conns.per_host == {}
    assert stack.conns.closed == {("tcp", "idle"): 1}


def test_traffic_either_way_pushes_the_close_back() -> None:
    stack = Stack(ConnectionLimits(idle_timeout=30.0))
    stream, transport = stack.accept("10.0.0.1", 40000)
    stack.loop.advance(20.0)
    stream.data_received(OPTIONS)  # at 20 s: due at 50
    assert stack.fed == [OPTIONS]
    stack.loop.advance(25.0)
    stream.write(b"SIP/2.0 200 OK\r\n\r\n")  # at 45 s: due at 75
    stack.loop.advance(29.0)
    assert not transport.closed
    stack.loop.advance(1.0)
    assert transport.closed
    # one timer per connection, pushed back lazily: it fired at 30, 50 and 75 only
    assert stack.conns.closed == {("tcp", "idle"): 1}


def test_connection_a_call_or_transaction_needs_stays_open_until_it_is_done() -> None:
    stack = Stack(ConnectionLimits(idle_timeout=30.0))
    peer = Address("tcp", "10.0.1.1", 5060)
    stream, transport = stack.connect(peer)  # ours, toward a target
    assert not stream.inbound and stack.conns.inbound == 0
    stack.busy.add(peer)
    stack.loop.advance(300.0)
    assert not transport.closed and stack.conns.by_peer[peer] is stream
    stack.busy.clear()  # the call ended
    stack.loop.advance(30.0)
    assert transport.closed and peer not in stack.conns.by_peer


def test_inbound_connections_bounded_per_source_and_in_total() -> None:
    stack = Stack(ConnectionLimits(idle_timeout=30.0, max_total=3, max_per_source=2))
    first = [stack.accept("10.0.0.1", 40000 + i)[1] for i in range(3)]
    assert [t.closed for t in first] == [False, False, True]
    other = [stack.accept("10.0.0.2", 40000 + i)[1] for i in range(2)]
    assert [t.closed for t in other] == [False, True]  # the third in all
    assert stack.conns.closed == {("tcp", "source_limit"): 1, ("tcp", "total_limit"): 1}
    assert stack.conns.inbound == 3
    assert stack.conns.per_host == {"10.0.0.1": 2, "10.0.0.2": 1}
    # connections we open are not bounded by these
    stack.connect(Address("tcp", "10.0.1.1", 5060))
    assert stack.conns.inbound == 3 and len(stack.conns.by_peer) == 4
    first[0].close()  # one closes: room for another from that source
    assert not stack.accept("10.0.0.1", 41000)[1].closed


def test_idle_timeout_zero_never_closes() -> None:
    stack = Stack(ConnectionLimits(idle_timeout=0.0))
    _, transport = stack.accept("10.0.0.1", 40000)
    stack.loop.advance(10_000.0)
    assert not transport.closed and stack.loop.timers == []


def test_stack_counts_transactions_calls_and_dialogs_as_users() -> None:
    """The stack's answer to `in_use`: a live transaction's destination, or an address
    the app says a call or dialog sends to (IPv6 brackets or not)."""
    clock = Clock()
    layer = TransactionLayer()
    stack = SipStack(layer, clock=clock)
    target = Address("tcp", "10.0.1.1", 5060)
    assert not stack.conns.in_use(target)
    layer.send_request(Request("OPTIONS", "sip:10.0.1.1;transport=tcp", Headers(
        [("Via", "SIP/2.0/TCP 10.0.0.9;branch=z9hG4bKopt1"), ("From", "<sip:a@x>;tag=1"),
         ("To", "<sip:b@y>"), ("Call-ID", "o1"), ("CSeq", "1 OPTIONS")])), target, clock.now)
    clock.now += 1.0  # the addresses are gathered at most once a second
    assert stack.conns.in_use(target)
    caller = Address("tls", "::1", 40000)
    stack.connection_users = lambda: [Address("tls", "[::1]", 40000)]
    assert not stack.conns.in_use(caller)  # still the addresses gathered this second
    clock.now += 1.0
    assert stack.conns.in_use(caller) and stack.conns.in_use(target)
