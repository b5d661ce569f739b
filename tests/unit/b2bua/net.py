"""The B2BUA in memory: the real engine, calls and transaction layers, on a fake link
with a manual clock. No sockets, no asyncio loop, no mocks of the SIP code.

`Net` holds the engine (with a fake stack: the real TransactionLayer, a manual clock and
a loop that only keeps timers) and the peers: a carrier (the caller's side, a UAC) and
PBXes (targets, UASes), each a TransactionLayer of its own with a dialog. `pump()` moves
datagrams until the link is quiet (dropping some when `loss` says so); `advance(s)` runs
every timer that falls in the next `s` seconds, pumping after each.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from calltrackd.b2bua.commands import CallInfo
from calltrackd.b2bua.engine import Engine
from calltrackd.config import Carrier, Settings, SipSettings
from calltrackd.sip.dialog import Dialog, make_cancel
from calltrackd.sip.endpoint import (
    AckReceived,
    Address,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionLayer,
    TransactionTimeout,
    new_branch,
    new_tag,
)
from calltrackd.sip.message import Headers, Request, Response, Via, response_for
from calltrackd.sip.transaction import ClientInviteTransaction, ServerInviteTransaction
from calltrackd.tracking.model import ForwardTarget, Tracker

ENGINE = Address("udp", "127.0.0.1", 5060)
CARRIER = Address("udp", "10.0.0.1", 5060)
PBX_A = Address("udp", "10.0.1.1", 5060)
PBX_B = Address("udp", "10.0.1.2", 5060)
DID = "+74990000001"
CALLER = "+79161234567"
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n" \
      b"m=audio 4000 RTP/AVP 0\r\n"
PBX_SDP = SDP.replace(b"10.0.0.1", b"10.0.1.1")


def settings(*targets: ForwardTarget | str, ring_timeout: float = 30.0,
             **sip: Any) -> Settings:
    forward = tuple(t if isinstance(t, ForwardTarget) else ForwardTarget(t) for t in targets)
    tracker = Tracker(id="main", public_key="pk_main", default_number=DID,
                      forward=forward or (ForwardTarget("sip:10.0.1.1:5060"),),
                      ring_timeout=ring_timeout)
    carrier = Carrier("carrier", (ipaddress.ip_network(f"{CARRIER.host}/32"),))
    return Settings(sip=SipSettings(**sip), carriers=(carrier,), trackers=(tracker,))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Handle:
    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]
                 ) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Forever:
    """An awaitable that never completes: a task awaiting it stays parked."""

    def __await__(self) -> Any:
        yield None


class Parked:
    """A task of the engine's that waits: `cancel()` closes it, as asyncio would."""

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        self.coro.close()
        return True


class FakeLoop:
    """What the engine asks of its loop: timers and tasks (run to completion at once:
    the resolver in tests answers without waiting)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timers: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()
        # a task that waits (a test's tracking or routing webhook that never answers)
        # is parked when `parking` says so, else it is a test's mistake
        self.parking = False
        self.parked: list[Parked] = []

    def time(self) -> float:
        return self.clock.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Handle:
        h = Handle(when, callback, args)
        heapq.heappush(self.timers, (when, next(self._seq), h))
        return h

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Handle:
        return self.call_at(self.clock.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., None], *args: Any) -> Handle:
        return self.call_at(self.clock.now, callback, *args)

    def create_task(self, coro: Coroutine[Any, Any, None]) -> Parked | None:
        try:
            coro.send(None)
        except StopIteration:
            return None
        if not self.parking:
            raise AssertionError("a task in tests must not wait")
        parked = Parked(coro)
        self.parked.append(parked)
        return parked

    def next_at(self) -> float | None:
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        return self.timers[0][0] if self.timers else None

    def run_due(self) -> None:
        while self.timers and self.timers[0][0] <= self.clock.now:
            _, _, h = heapq.heappop(self.timers)
            if not h.cancelled:
                h.callback(*h.args)


class FakeStack:
    def __init__(self, clock: Clock) -> None:
        self.layer = TransactionLayer()
        self.clock = clock
        self.loop = FakeLoop(clock)
        self.on_events: Callable[[list[Event]], None] = lambda events: None
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1  # the link takes what the layer has to send

    def local_hostport(self, transport: str, toward: str) -> tuple[str, int]:
        return ENGINE.host, ENGINE.port


@dataclass
class Hooks:
    seen: list[tuple[str, CallInfo]] = field(default_factory=list)

    def call_started(self, call: CallInfo) -> None:
        self.seen.append(("started", call))

    def call_forwarded(self, call: CallInfo, seconds: float) -> None:
        self.seen.append(("forwarded", call))

    def call_answered(self, call: CallInfo) -> None:
        self.seen.append(("answered", call))

    def call_ended(self, call: CallInfo) -> None:
        self.seen.append(("ended", call))

    @property
    def kinds(self) -> list[str]:
        return [k for k, _ in self.seen]

    @property
    def cdr(self) -> CallInfo:
        ended = [c for k, c in self.seen if k == "ended"]
        assert len(ended) == 1, self.kinds
        return ended[0]


class Peer:
    """A SIP endpoint on the link: a transaction layer, one dialog, what it received.

    It answers on its own what any UA answers the same way: 200 to BYE, INFO and UPDATE
    (UPDATE and re-INVITE with its SDP), 200 to a CANCEL and 487 to the INVITE it
    cancels, an ACK for each 2xx to its INVITEs. New INVITEs wait for the test
    (`respond`), unless `auto` lists statuses to answer them with at once."""

    def __init__(self, net: Net, addr: Address, sdp: bytes = SDP) -> None:
        self.net = net
        self.addr = addr
        self.sdp = sdp
        self.layer = TransactionLayer()
        self.dialog: Dialog | None = None
        self.invite_txn: ServerInviteTransaction | None = None
        self.client_invite: Request | None = None
        self.requests: list[Request] = []  # new requests received (not retransmissions)
        self.responses: list[Response] = []  # responses to its requests
        self.acks: list[Request] = []
        self.timeouts: list[str] = []
        self.auto: list[int] = []
        self.answer_ack_body: bytes | None = None
        self.refuse_in_dialog: dict[str, int] = {}  # method → status to answer instead
        self.answered = False  # its INVITE got a final response from it

    # -- as seen by tests --------------------------------------------------------------

    def statuses(self, method: str = "INVITE") -> list[int]:
        return [r.status for r in self.responses if r.cseq[1] == method]

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def last(self, method: str) -> Request:
        return [r for r in self.requests if r.method == method][-1]

    # -- acting ------------------------------------------------------------------------

    def via(self) -> str:
        return Via.own("udp", self.addr.host, self.addr.port, new_branch())

    def invite(self, did: str = DID, body: bytes = SDP, extra: dict[str, str] | None = None,
               to: Address = ENGINE, uri: str | None = None) -> Request:
        """A new INVITE to `to` (its Request-URI `uri`, else sip:DID@to)."""
        tag = new_tag()
        h = Headers()
        h.add("Via", self.via())
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{CALLER}@{self.addr.host}>;tag={tag}")
        h.add("To", f"<sip:{did}@{to.host}>")
        h.add("Call-ID", f"{new_tag()}@{self.addr.host}")
        h.add("CSeq", "1 INVITE")
        h.add("Contact", f"<sip:caller@{self.addr.host}:{self.addr.port}>")
        for name, value in (extra or {}).items():
            h.add(name, value)
        if body:
            h.add("Content-Type", "application/sdp")
        req = Request("INVITE", uri or f"sip:{did}@{to.host}:{to.port}", h, body)
        self.dialog = Dialog(req.call_id, tag, h.get("From") or "", h.get("To") or "",
                             req.uri)
        self.dialog.local_cseq = 1
        self.dialog.invite_cseq = 1
        self.client_invite = req
        self.layer.send_request(req, to, self.net.clock.now)
        self.net.pump()
        return req

    def cancel(self) -> None:
        assert self.client_invite is not None
        self.layer.send_request(make_cancel(self.client_invite), ENGINE, self.net.clock.now)
        self.net.pump()

    def send(self, method: str, body: bytes = b"", pump: bool = True) -> Request:
        """A request in the dialog (BYE, INFO, UPDATE, re-INVITE)."""
        assert self.dialog is not None
        contact = f"<sip:peer@{self.addr.host}:{self.addr.port}>"
        req = self.dialog.request(method, self.via(), contact if method in ("INVITE", "UPDATE")
                                  else None, body, "application/sdp" if body else None)
        self.layer.send_request(req, ENGINE, self.net.clock.now)
        if pump:
            self.net.pump()
        return req

    def respond(self, status: int, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> None:
        """Answer the INVITE it received."""
        txn = self.invite_txn
        assert txn is not None and self.dialog is not None
        if body is None:
            body = self.sdp if status in (183, 200) else b""
        resp = response_for(txn.request, status)
        resp.headers.set("To", self.dialog.local)
        if 100 < status < 300:
            resp.headers.add("Contact", f"<sip:pbx@{self.addr.host}:{self.addr.port}>")
        for name, value in (headers or {}).items():
            resp.headers.add(name, value)
        if body:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        if status >= 200:
            self.answered = True
        self.layer.respond(txn, resp, self.net.clock.now)
        self.net.pump()

    # -- what arrives ------------------------------------------------------------------

    def deliver(self, data: bytes, source: Address) -> None:
        for event in self.layer.receive(data, source, self.net.clock.now):
            self.on_event(event)

    def on_timers(self) -> None:
        for event in self.layer.handle_timer(self.net.clock.now):
            self.on_event(event)

    def on_event(self, event: Event) -> None:
        now = self.net.clock.now
        if isinstance(event, ResponseReceived):
            resp = event.response
            self.responses.append(resp)
            txn = event.transaction
            if isinstance(txn, ClientInviteTransaction) and self.dialog is not None \
                    and txn.request.call_id == self.dialog.call_id:
                self.dialog.receive_response(resp)
                if 200 <= resp.status < 300:
                    ack = self.dialog.request("ACK", self.via(), None,
                                              self.answer_ack_body or b"",
                                              "application/sdp" if self.answer_ack_body
                                              else None, cseq=txn.request.cseq[0])
                    self.layer.send_ack(txn, ack)
        elif isinstance(event, AckReceived):
            self.acks.append(event.request)
        elif isinstance(event, TransactionTimeout):
            self.timeouts.append(event.timer)
        elif isinstance(event, RequestReceived):
            req, stxn = event.request, event.transaction
            self.requests.append(req)
            method = req.method
            if method == "INVITE" and not req.to.tag:
                assert isinstance(stxn, ServerInviteTransaction)
                self.invite_txn = stxn
                self.dialog = Dialog.uas(req, new_tag())
                for status in self.auto:
                    self.respond(status)
                return
            if method == "CANCEL":
                self._answer(stxn, req, 200)
                inv = self.invite_txn
                if inv is not None and event.cancels is inv and self.dialog is not None \
                        and not self.answered:
                    self.answered = True
                    resp = response_for(inv.request, 487)
                    resp.headers.set("To", self.dialog.local)
                    self.layer.respond(inv, resp, now)
                return
            if self.dialog is not None:
                self.dialog.receive_request(req)
            status = self.refuse_in_dialog.get(method, 200)
            body = self.sdp if method in ("INVITE", "UPDATE") and status == 200 else b""
            self._answer(stxn, req, status, body)

    def _answer(self, txn: ServerTransaction, req: Request, status: int,
                body: bytes = b"") -> None:
        resp = response_for(req, status)
        if self.dialog is not None and req.method != "CANCEL":
            to = resp.headers.get("To") or ""
            if ";tag=" not in to:
                resp.headers.set("To", f"{to};tag={self.dialog.local_tag}")
        if body:
            resp.headers.add("Contact", f"<sip:peer@{self.addr.host}:{self.addr.port}>")
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = body
        self.layer.respond(txn, resp, self.net.clock.now)


class Net:
    def __init__(self, config: Settings | None = None,
                 loss: Callable[[bytes, Address], bool] | None = None) -> None:
        self.clock = Clock()
        self.stack = FakeStack(self.clock)
        self.config = config or settings()
        self.hooks = Hooks()
        self.engine = Engine(cast(Any, self.stack), lambda: self.config, self.hooks,
                             wall=lambda: 1_700_000_000.0)
        self.engine.resolver = self._resolve
        self.names: dict[str, str] = {}  # host name → address, for targets given by name
        self.loss = loss
        self.carrier = Peer(self, CARRIER)
        self.pbx_a = Peer(self, PBX_A, PBX_SDP)
        self.pbx_b = Peer(self, PBX_B, PBX_SDP)
        self.peers = {(p.addr.host, p.addr.port): p
                      for p in (self.carrier, self.pbx_a, self.pbx_b)}
        self.dropped: list[bytes] = []
        self.engine_sent: list[tuple[bytes, Address]] = []

    async def _resolve(self, host: str, port: int) -> str:
        if host not in self.names:
            raise OSError(f"{host}: Name or service not known")
        return self.names[host]

    def _lost(self, data: bytes, dest: Address) -> bool:
        """Whether the link loses `data` on its way to `dest`."""
        if self.loss is not None and self.loss(data, dest):
            self.dropped.append(data)
            return True
        return False

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for data, dest in self.stack.layer.transmits():
                moved = True
                self.engine_sent.append((data, dest))
                if not self._lost(data, dest):
                    self.peers[(dest.host, dest.port)].deliver(data, ENGINE)
            for peer in self.peers.values():
                for data, _dest in peer.layer.transmits():
                    moved = True
                    if not self._lost(data, ENGINE):
                        events = self.stack.layer.receive(data, peer.addr, self.clock.now)
                        if events:
                            self.engine.handle(events)

    def advance(self, seconds: float) -> None:
        until = self.clock.now + seconds
        while True:
            deadlines = [t for t in (self.stack.layer.get_timer(), self.stack.loop.next_at(),
                                     *(p.layer.get_timer() for p in self.peers.values()))
                         if t is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.clock.now = max(self.clock.now, min(deadlines))
            events = self.stack.layer.handle_timer(self.clock.now)
            if events:
                self.engine.handle(events)
            self.stack.loop.run_due()
            for peer in self.peers.values():
                peer.on_timers()
            self.pump()
        self.clock.now = until
