"""One call as a sans-I/O state machine: events and the time in, commands out.

Theory of operation
-------------------
A call has two legs: A, the caller's (we are its UAS), and B, toward the target we try
(we are its UAC). The engine creates the call for a new INVITE and feeds it events
(commands.py): the routing answer, requests, ACKs and CANCELs from the legs' peers,
responses and timeouts of the call's client transactions, its own timers firing, and the
answers to DNS look-ups. `handle(event, now)` returns the commands to execute (send,
respond, start or cancel a timer, resolve, notify the hooks, log). It never reads a
clock, sends a byte or touches asyncio: the same events give the same commands.

    ROUTING --Routed--> CALLING (or RESOLVING when the target is a name)
    RESOLVING --Resolved--> CALLING;  --ResolveFailed--> the next target
    CALLING --1xx relayed--> EARLY
    CALLING, EARLY --2xx--> CONNECTED
    CALLING, EARLY --4xx/5xx, Timer B, ring timeout--> the next target (CALLING/RESOLVING)
    CALLING, EARLY --6xx, or no target left--> ENDED (the last final code to the caller)
    any but ENDED --CANCEL (before 2xx), BYE, max duration, Terminate--> ENDED
    ENDED: late answers of the legs' transactions only (a 2xx that crossed our CANCEL is
    ACKed and hung up; a 1xx to an INVITE we gave up before any answer gets the CANCEL)

Failover rule: a target that answers 4xx or 5xx, times out (Timer B), or rings longer
than the route's `ring_timeout`, hands the call to the next target; a 6xx (global failure,
RFC 3261 §21.6, e.g. 600 Busy Everywhere, 603 Decline) ends the hunt, as does the last
target. So 486 Busy Here moves on when more targets are configured and ends the call
otherwise. A 401/407 from a target with credentials is retried once with them (§22.2).

Hunt `simultaneous` (the route's `hunt`): ROUTING --Routed--> CALLING with an INVITE to
every target at once (`fork`, each on its own B leg); the first 1xx is relayed (EARLY),
the first 2xx wins (CONNECTED, the others abandoned: CANCEL, or ACK and BYE), a 6xx ends
all, the last failure or the one ring timeout ends the call. Targets needing DNS or an
anchored call hunt in order instead.

Media anchoring (the tracker's `media = "anchor"`, rtpengine configured): before the
first INVITE to a target the call emits MediaOffer with the caller's SDP and waits (in
ROUTING/RESOLVING) for MediaDone; every target then gets rtpengine's SDP. A 1xx or 2xx
with SDP from the target is held while MediaAnswer runs, then relayed with rtpengine's
SDP. A MediaDone with an error (rtpengine down, slow past the ng budget) means the
original SDP goes on: tracking never costs a call. The end emits MediaDelete; a
MediaTimeout (no RTP for `media_timeout`) hangs up an answered call, by "system".

An event `_ACCEPTS` does not list for the state, or a move `_NEXT` does not list, raises
`CallStateError` naming the state and the event.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Literal

from ..sip.dialog import Dialog, DialogError, make_cancel
from ..sip.digest import authorization_for
from ..sip.endpoint import Address, ClientTransaction, ServerTransaction
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import ForwardTarget, HangupBy, Outcome
from .commands import (
    AckIn,
    CallEvent,
    CallInfo,
    CancelIn,
    CancelTimer,
    Command,
    Finished,
    Log,
    MediaAnswer,
    MediaDelete,
    MediaDone,
    MediaOffer,
    MediaTimeout,
    Notify,
    RegisterDialog,
    RequestIn,
    Resolve,
    Resolved,
    ResolveFailed,
    Respond,
    ResponseIn,
    Routed,
    SendAck,
    SendRequest,
    StartTimer,
    Terminate,
    TimeoutIn,
    TimerFired,
)
from .legs import (
    Attempt,
    CallHost,
    Leg,
    Phase,
    b_dialog,
    literal_address,
    outgoing_invite,
    peer_address,
    response,
    retry_invite,
)
from .routing import Route

__all__ = ["Call", "CallInfo", "CallStateError", "Leg", "State"]

RING = "ring"  # timer: the current target rang for the route's ring_timeout
MAX_DURATION = "max_duration"  # timer: sip.max_call_duration after the answer
RETRY_AFTER = (("Retry-After", "5"),)
Relay = tuple[ServerTransaction, Request, Leg]  # a request we relay: its transaction, leg


class State(enum.Enum):
    ROUTING = "routing"  # the INVITE is in; waiting for the routing answer
    RESOLVING = "resolving"  # hunting: the next target's host is being looked up
    CALLING = "calling"  # an INVITE is out to a target; nothing relayed back yet
    EARLY = "early"  # the target's 1xx went to the caller (ringing, early media)
    CONNECTED = "connected"  # answered (§13.3.1.4): in-dialog requests relayed both ways
    ENDED = "ended"  # CDR done; only the legs' transactions may still report


_HUNTING = frozenset({State.RESOLVING, State.CALLING, State.EARLY, State.ENDED})
_NEXT: dict[State, frozenset[State]] = {
    State.ROUTING: _HUNTING,
    State.RESOLVING: _HUNTING,
    State.CALLING: _HUNTING | {State.CONNECTED},
    State.EARLY: _HUNTING | {State.CONNECTED},
    State.CONNECTED: frozenset({State.ENDED}),
    State.ENDED: frozenset(),
}
_LEGS: frozenset[type] = frozenset({ResponseIn, TimeoutIn, RequestIn, AckIn, CancelIn,
                                    Terminate, MediaDone, MediaTimeout})
_ACCEPTS: dict[State, frozenset[type]] = {
    State.ROUTING: frozenset({Routed, CancelIn, Terminate, MediaDone}),
    State.RESOLVING: _LEGS | {Resolved, ResolveFailed},
    State.CALLING: _LEGS | {TimerFired},
    State.EARLY: _LEGS | {TimerFired},
    State.CONNECTED: _LEGS | {TimerFired},
    State.ENDED: frozenset({ResponseIn, TimeoutIn, AckIn, CancelIn, Terminate, Resolved,
                            ResolveFailed, MediaDone, MediaTimeout}),
}


class CallStateError(Exception):
    """An event (or a move) the call's state does not allow: a bug, ours or the engine's."""

    def __init__(self, call: str, state: State, what: str) -> None:
        super().__init__(f"call {call}: no transition from {state.name} on {what}")
        self.state = state
        self.what = what


class Call:
    __slots__ = ("_accepts", "_out", "_t0", "_wall0", "a", "a_txn", "abandoned", "ack_pending",
                 "anchor", "answered_now", "attempt", "b", "fork", "held", "host", "id", "info",
                 "invite", "last_by", "last_code", "last_reason", "legs", "max_duration",
                 "media_offered", "media_seq", "media_wait", "offer_sdp", "record", "relays",
                 "reoffers", "resolving", "ring_timeout", "route", "source", "state", "targets",
                 "user_agent")

    def __init__(self, host: CallHost, invite: Request, transaction: ServerTransaction,
                 source: Address, now: float, wall: float, *, user_agent: str,
                 max_duration: float, route: Route | None = None) -> None:
        """`now` is the engine's clock (all times passed in later are on it); `wall`
        the Unix time at `now`, from which the CDR's timestamps are counted. `route`:
        the route so far (tracker, DID, caller) while routing still waits for the
        attribution or the routing webhook; a call that ends in ROUTING (CANCEL,
        Terminate) keeps its record by it."""
        self.host = host
        self.id = host.new_id("call")
        self.invite = invite
        self.a_txn = transaction
        self.source = source
        self.user_agent = user_agent
        self.max_duration = max_duration
        self._t0 = now
        self._wall0 = wall
        self._out: list[Command] = []
        self.state = State.ROUTING
        self._accepts = _ACCEPTS[State.ROUTING]  # the state's row of the table, at hand
        self.info: CallInfo | None = None
        self.a = Leg(self.id, "a", Dialog.uas(invite, host.new_id("tag")), source.transport,
                     source.host)
        # an unresolvable next hop (a name) falls back to where the INVITE came from
        self.a.dest = peer_address(self.a) or source
        self.b: Leg | None = None
        self.legs: list[Leg] = [self.a]  # every leg whose dialog is registered
        self.targets: list[ForwardTarget] = []
        self.ring_timeout = 30.0
        self.route: Route | None = route
        self.attempt: Attempt | None = None
        self.abandoned: list[Attempt] = []  # given up before a provisional: CANCEL on one
        self.fork: list[Attempt] = []  # hunt `simultaneous`: the targets ringing at once
        self.resolving: tuple[ForwardTarget, SipURI] | None = None
        self.last_code = 0
        self.last_reason = ""
        self.last_by: HangupBy = "callee"
        # id(request we relayed) → the transaction and request it relays, and their leg
        self.relays: dict[int, tuple[ServerTransaction, Request, Leg]] = {}
        self.ack_pending = False  # late offer: B's ACK waits for the body of A's ACK
        # media anchoring: wanted (tracker), offered, rtpengine's SDP for the targets
        self.anchor = False
        self.answered_now = 0.0  # when the call was answered (the engine's clock)
        self.record = False
        self.media_offered = False
        self.offer_sdp: bytes | None = None
        self.media_wait: tuple[ForwardTarget, SipURI, Address] | None = None
        self.media_seq = 0
        # responses held while rtpengine answers: seq → status, reason, the answerer's
        # own SDP, its Content-Type, and the relay it answers (None: the caller's INVITE)
        self.held: dict[int, tuple[int, str, bytes, str | None, Relay | None]] = {}
        # re-INVITEs/UPDATEs held while rtpengine takes their offer: seq → relay, request
        self.reoffers: dict[int, tuple[Relay, Leg]] = {}

    # -- the one entry point -----------------------------------------------------------

    def handle(self, event: CallEvent, now: float) -> list[Command]:
        if type(event) not in self._accepts:
            raise CallStateError(self.id, self.state, type(event).__name__)
        out = self._out = []
        if isinstance(event, ResponseIn):
            self._on_response(event, now)
        elif isinstance(event, RequestIn):
            self._on_request(event, now)
        elif isinstance(event, AckIn):
            self._on_ack(event)
        elif isinstance(event, TimeoutIn):
            self._on_timeout(event, now)
        elif isinstance(event, TimerFired):
            self._on_timer(event, now)
        elif isinstance(event, CancelIn):
            self._on_cancel(event, now)
        elif isinstance(event, Routed):
            self._on_routed(event, now)
        elif isinstance(event, Resolved):
            self._on_resolved(event, now)
        elif isinstance(event, ResolveFailed):
            self._on_resolve_failed(event, now)
        elif isinstance(event, MediaDone):
            self._on_media(event, now)
        elif isinstance(event, MediaTimeout):
            self._on_media_timeout(event, now)
        else:
            self._on_terminate(now)
        self._out = []
        return out

    # -- helpers -----------------------------------------------------------------------

    def _goto(self, state: State) -> None:
        if state is self.state:
            return
        if state not in _NEXT[self.state]:
            raise CallStateError(self.id, self.state, f"a move to {state.name}")
        self.state = state
        self._accepts = _ACCEPTS[state]

    def _wall(self, now: float) -> datetime:
        return datetime.fromtimestamp(self._wall0 + (now - self._t0), UTC)

    def _log(self, event: str, level: Literal["info", "warning"] = "info",
             **fields: Any) -> None:
        info = self.info
        if info is not None:
            fields = {"call": self.id, "did": info.did, "caller": info.caller, **fields}
        else:
            fields = {"call": self.id, **fields}
        self._out.append(Log(event, fields, level))

    def _respond_a(self, status: int, reason: str | None = None, body: bytes = b"",
                   content_type: str | None = None,
                   headers: tuple[tuple[str, str], ...] = ()) -> None:
        """An answer to the caller's INVITE."""
        resp = response(self.host, self.a, self.invite, status, reason, body, content_type,
                        headers, dialog_forming=True)
        self._out.append(Respond(self.a_txn, resp))

    def _respond(self, txn: ServerTransaction, req: Request, leg: Leg, status: int,
                 reason: str | None = None, body: bytes = b"",
                 content_type: str | None = None) -> None:
        """An answer to a request in `leg`'s dialog."""
        self._out.append(Respond(txn, response(self.host, leg, req, status, reason, body,
                                               content_type)))

    def _send_bye(self, leg: Leg) -> None:
        if leg.dest is not None:
            self._out.append(SendRequest(leg, leg.request(self.host, "BYE"), leg.dest,
                                         track=False))

    def _send_ack(self, leg: Leg, txn: ClientInviteTransaction, body: bytes = b"",
                  content_type: str | None = None) -> None:
        ack = leg.request(self.host, "ACK", body, content_type, cseq=txn.request.cseq[0])
        self._out.append(SendAck(txn, ack))

    def _ack_and_bye(self, leg: Leg, txn: ClientInviteTransaction, resp: Response) -> None:
        """A 2xx from a target we no longer want: the dialog is made, so ACK and BYE."""
        leg.dialog.receive_response(resp)
        leg.follow_target()
        self._send_ack(leg, txn)
        self._send_bye(leg)

    # -- the hunt ----------------------------------------------------------------------

    def _open(self, r: Route, started: float) -> None:
        """The call's record begins: the hooks hear of it (call_started)."""
        info = self.info = CallInfo(id=self.id, tracker=r.tracker, did=r.did,
                                    caller=r.caller, carrier=r.carrier,
                                    started_at=self._wall(started))
        if r.attribution is not None:  # routing waited for it: the record keeps it
            info.extra["attribution"] = r.attribution
            info.extra["first_time_caller"] = r.first_time
        self.route = r
        self._out.append(Notify("started", info))
        self._log("call.started", tracker=r.tracker.id, carrier=r.carrier, rule=r.rule)

    def _open_in_routing(self) -> None:
        """A call that ends while routing waits still gets its record (tracking never
        costs a call, and a record is kept): from the route so far, ringing since the
        INVITE."""
        if self.state is State.ROUTING and self.info is None and self.route is not None:
            self._open(self.route, self._t0)

    def _on_routed(self, event: Routed, now: float) -> None:
        r = event.route
        self.targets = list(r.targets)
        self.ring_timeout = r.ring_timeout
        if event.media is not None and event.media.mode == "anchor":
            self.anchor = True
            self.record = event.media.record
        self._out.append(RegisterDialog(self.a))
        self._respond_a(100)
        self._open(r, now)
        if r.reject is not None:  # the routing webhook refused the call: nothing is dialled
            self.last_code, self.last_reason, self.last_by = r.reject, "", "system"
        self._next_target(now)

    def _next_target(self, now: float) -> None:
        if self._fork_all(now):
            return
        while self.targets:
            target = self.targets.pop(0)
            try:
                uri = SipURI.parse(target.uri)
            except SipSyntaxError:
                self._log("call.bad_target", "warning", target=target.uri)
                continue
            addr = literal_address(uri)
            if addr is None:
                self.resolving = (target, uri)
                self._goto(State.RESOLVING)
                self._out.append(Resolve(uri))
            else:
                self._send_invite(target, uri, addr, now)
            return
        self._fail(now)

    def _on_resolved(self, event: Resolved, now: float) -> None:
        pending, self.resolving = self.resolving, None
        if self.state is State.RESOLVING and pending is not None:
            self._send_invite(pending[0], pending[1], event.address, now)

    def _on_resolve_failed(self, event: ResolveFailed, now: float) -> None:
        pending, self.resolving = self.resolving, None
        if self.state is not State.RESOLVING:
            return
        self._log("call.target_unresolved", "warning",
                  target=pending[0].uri if pending else None, error=event.error)
        self.last_code, self.last_reason, self.last_by = 503, "Service Unavailable", "system"
        self._next_target(now)

    def _send_invite(self, target: ForwardTarget, uri: SipURI, addr: Address,
                     now: float) -> None:
        info = self.info
        assert info is not None
        if self.anchor and not self.media_offered:
            self.media_offered = True
            if self.invite.body:
                self.media_wait = (target, uri, addr)
                self._out.append(MediaOffer(self.invite.body, self.invite.from_.tag or "",
                                            self.record))
                return
            self._media_direct("late_offer")
        attempt = self._invite(target, uri, addr)
        self.b = attempt.leg
        self.attempt = attempt
        info.target = target.uri
        self._goto(State.CALLING)
        self._out.append(StartTimer(RING, now + self.ring_timeout))
        self._out.append(Notify("forwarded", info, now - self._t0))

    def _invite(self, target: ForwardTarget, uri: SipURI, addr: Address) -> Attempt:
        """An INVITE to one target on a B leg (dialog) of its own."""
        info, r = self.info, self.route
        assert info is not None and r is not None
        dialog, _ = b_dialog(self.host, self.invite, uri, info.did, addr, r.from_user,
                             r.display, r.anonymous, r.caller_name)
        leg = Leg(self.id, "b", dialog, addr.transport, addr.host)
        leg.dest = addr
        req = outgoing_invite(self.host, leg, self.invite, self.id, self.user_agent,
                              r.headers)
        if self.offer_sdp is not None:
            req.body = self.offer_sdp
        self.legs.append(leg)
        self._out.append(RegisterDialog(leg))
        self._out.append(SendRequest(leg, req, addr))
        return Attempt(target, leg, req)

    # -- hunt `simultaneous`: every target at once -------------------------------------

    def _fork_all(self, now: float) -> bool:
        """Ring every target at once (the route's hunt `simultaneous`), each on its own
        B leg, for the one ring timeout; False (hunt in order) unless there are two or
        more targets, all with IP literal hosts, and the media is not anchored."""
        r, info = self.route, self.info
        if r is None or info is None or r.hunt != "simultaneous" or self.anchor \
                or len(self.targets) < 2 or self.state is not State.ROUTING:
            return False
        found = []
        for target in self.targets:
            try:
                uri = SipURI.parse(target.uri)
            except SipSyntaxError:
                return False
            addr = literal_address(uri)
            if addr is None:
                return False
            found.append((target, uri, addr))
        self.targets = []
        self.fork = [self._invite(*one) for one in found]
        info.target = found[0][0].uri  # until one answers
        self._goto(State.CALLING)
        self._log("call.forked", targets=[t.uri for t, _, _ in found])
        self._out.append(StartTimer(RING, now + self.ring_timeout))
        self._out.append(Notify("forwarded", info, now - self._t0))
        return True

    def _abandon_all(self) -> None:
        """Give up on the current attempt, or on every target of a fork."""
        if self.attempt is not None:
            self._abandon(self.attempt)
        fork, self.fork = self.fork, []
        for attempt in fork:
            self._abandon(attempt)

    def _on_fork_response(self, attempt: Attempt, txn: ClientInviteTransaction,
                          resp: Response, now: float) -> None:
        code = resp.status
        leg = attempt.leg
        if code < 200:
            attempt.phase = Phase.PROCEEDING
            if code == 100:
                return
            leg.dialog.receive_response(resp)
            if self.state is State.CALLING:  # the first to ring is relayed, no other
                self._goto(State.EARLY)
                self._relay_to_a(resp)
            return
        self.fork.remove(attempt)
        if code < 300:  # the first 2xx wins; the others are cancelled
            self._out.append(CancelTimer(RING))
            self._abandon_all()
            self.b = leg
            self.attempt = attempt
            assert self.info is not None
            self.info.target = attempt.target.uri
            self._on_answer(attempt, txn, resp, now)
            return
        leg.dialog.receive_response(resp)
        self._fork_failed(attempt, code, resp.reason, "callee", now)

    def _fork_failed(self, attempt: Attempt, code: int, reason: str, by: HangupBy,
                     now: float) -> None:
        """A forked target failed: a 6xx ends them all; the last one the call."""
        self.last_code, self.last_reason, self.last_by = code, reason, by
        self._log("call.target_failed", target=attempt.target.uri, code=code)
        if code >= 600:
            self._abandon_all()
        if not self.fork:
            self._out.append(CancelTimer(RING))
            self._fail(now)

    def _abandon(self, attempt: Attempt) -> None:
        """Give up on an unanswered attempt: CANCEL it, or, before any provisional
        (§9.1), as soon as one comes."""
        if self.attempt is attempt:
            self.attempt = None
            self._out.append(CancelTimer(RING))
        if attempt.phase is Phase.PROCEEDING:
            assert attempt.leg.dest is not None
            self._out.append(SendRequest(attempt.leg, make_cancel(attempt.invite),
                                         attempt.leg.dest, track=False))
        elif attempt.phase is Phase.SENT:
            self.abandoned.append(attempt)

    def _fail(self, now: float) -> None:
        """No target answered: the last target's final code goes to the caller."""
        code = self.last_code or 480
        self._respond_a(code, self.last_reason or None)
        self._end(_outcome_for(code), self.last_by, code, now)

    # -- responses ---------------------------------------------------------------------

    def _on_response(self, event: ResponseIn, now: float) -> None:
        txn, resp, leg = event.transaction, event.response, event.leg
        req = txn.request
        attempt = self.attempt
        if attempt is not None and req is attempt.invite:
            assert isinstance(txn, ClientInviteTransaction)
            self._on_invite_response(attempt, txn, resp, now)
            return
        for forked in self.fork:
            if req is forked.invite:
                assert isinstance(txn, ClientInviteTransaction)
                self._on_fork_response(forked, txn, resp, now)
                return
        relay = self.relays.get(id(req))
        if relay is not None:
            self._relay_response(leg, txn, resp, relay)
            return
        for old in self.abandoned:
            if req is old.invite:
                self.abandoned.remove(old)
                if resp.status < 200:
                    old.phase = Phase.PROCEEDING
                    self._abandon(old)
                    return
                break
        if isinstance(txn, ClientInviteTransaction) and 200 <= resp.status < 300:
            # a target answered after we moved on (or the caller left): take it down
            self._ack_and_bye(leg, txn, resp)

    def _on_invite_response(self, attempt: Attempt, txn: ClientInviteTransaction,
                            resp: Response, now: float) -> None:
        code = resp.status
        leg = attempt.leg
        if attempt.phase is Phase.ANSWERED:
            return  # the 2xx again: its transaction ACKs it
        if code < 200:
            attempt.phase = Phase.PROCEEDING
            if code == 100:
                return
            leg.dialog.receive_response(resp)
            self._goto(State.EARLY)
            self._relay_to_a(resp)
            return
        self._out.append(CancelTimer(RING))
        if code < 300:
            self._on_answer(attempt, txn, resp, now)
            return
        leg.dialog.receive_response(resp)
        self.attempt = None
        if code in (401, 407) and attempt.target.username and not attempt.auth_tried \
                and self._authenticate(attempt, resp, now):
            return
        self.last_code, self.last_reason, self.last_by = code, resp.reason, "callee"
        self._log("call.target_failed", target=attempt.target.uri, code=code)
        if code >= 600:
            self.targets.clear()
        self._next_target(now)

    def _authenticate(self, attempt: Attempt, resp: Response, now: float) -> bool:
        """Retry the INVITE once with digest credentials (RFC 3261 §22.2)."""
        target = attempt.target
        assert target.username is not None
        www = resp.status == 401
        challenge = resp.headers.get("WWW-Authenticate" if www else "Proxy-Authenticate")
        if not challenge:
            return False
        req = retry_invite(self.host, attempt.leg, attempt.invite)
        credentials = authorization_for(challenge, "INVITE", req.uri, target.username,
                                        target.password or "")
        if credentials is None:
            return False
        req.headers.add("Authorization" if www else "Proxy-Authorization", credentials)
        attempt.invite = req
        attempt.auth_tried = True
        attempt.phase = Phase.SENT
        self.attempt = attempt
        assert attempt.leg.dest is not None
        self._out.append(SendRequest(attempt.leg, req, attempt.leg.dest))
        self._out.append(StartTimer(RING, now + self.ring_timeout))
        return True

    def _on_answer(self, attempt: Attempt, txn: ClientInviteTransaction, resp: Response,
                   now: float) -> None:
        info = self.info
        assert info is not None
        leg = attempt.leg
        leg.dialog.receive_response(resp)
        leg.follow_target()
        attempt.phase = Phase.ANSWERED
        attempt.txn = txn
        if not self.invite.body and resp.body:
            self.ack_pending = True  # late offer: the caller's ACK carries the answer
        else:
            self._send_ack(leg, txn)
        self._goto(State.CONNECTED)
        info.answered_at = self._wall(now)
        self.answered_now = now
        info.sip_code = resp.status
        self._relay_to_a(resp)
        self._log("call.answered", target=attempt.target.uri)
        self._out.append(Notify("answered", info))
        self._out.append(StartTimer(MAX_DURATION, now + self.max_duration))

    def _relay_to_a(self, resp: Response) -> None:
        """A target's 1xx/2xx to the caller; with SDP on an anchored call, held until
        rtpengine has answered (MediaDone)."""
        ctype = resp.headers.get("Content-Type")
        if self.offer_sdp is None or not resp.body:
            self._respond_a(resp.status, resp.reason, resp.body, ctype)
            return
        self.media_seq += 1
        self.held[self.media_seq] = (resp.status, resp.reason, resp.body, ctype, None)
        self._out.append(MediaAnswer(resp.body, self.invite.from_.tag or "",
                                     resp.to.tag or "", self.media_seq))

    def _tag(self, leg: Leg) -> str:
        """The tag rtpengine knows a side of the call by: its peer's SIP tag."""
        if leg is self.a:
            return self.invite.from_.tag or ""
        return leg.dialog.remote_tag or ""

    # -- media -------------------------------------------------------------------------

    def _media_direct(self, reason: str) -> None:
        """No anchoring for this call (the record says why)."""
        if self.info is not None:
            self.info.extra["media"] = {"mode": "direct", "reason": reason}
        self._log("call.media_direct", "warning", reason=reason)

    def _on_media(self, event: MediaDone, now: float) -> None:
        if event.kind == "offer" and event.seq:
            self._on_reoffer(event)
            return
        if event.kind == "offer":
            pending, self.media_wait = self.media_wait, None
            if event.sdp is not None and event.error is None:
                self.offer_sdp = event.sdp
                if self.info is not None:
                    self.info.extra["media"] = {"mode": "anchor",
                                                "recorded": self.record}
            else:
                self._media_direct(f"offer: {event.error}")
            if pending is not None and self.state in (State.ROUTING, State.RESOLVING):
                self._send_invite(*pending, now)
            return
        held = self.held.pop(event.seq, None)
        if held is None:
            return
        status, reason, body, ctype, relay = held
        if relay is not None:
            if event.sdp is not None and event.error is None:
                body = event.sdp
            else:
                self._media_direct(f"answer: {event.error}")
            self._respond(relay[0], relay[1], relay[2], status, reason, body, ctype)
            return
        if self.state is State.ENDED or (status < 200 and self.state is not State.EARLY):
            return  # the caller's INVITE was answered meanwhile
        if event.sdp is not None and event.error is None:
            body = event.sdp
        else:
            # the callee's own SDP: the caller sends to it directly, the callee still
            # through rtpengine (which knows the caller from the offer)
            self._media_direct(f"answer: {event.error}")
        self._respond_a(status, reason, body, ctype)

    def _on_reoffer(self, event: MediaDone) -> None:
        """rtpengine took a re-INVITE's or UPDATE's offer: relay it with its SDP."""
        held = self.reoffers.pop(event.seq, None)
        if held is None or self.state is not State.CONNECTED:
            return
        (txn, req, leg), other = held
        body = req.body
        if event.sdp is not None and event.error is None:
            body = event.sdp
        else:
            self._media_direct(f"re-offer: {event.error}")
        self._relay_request(txn, req, leg, other, body)

    def _relay_request(self, txn: ServerTransaction, req: Request, leg: Leg, other: Leg,
                       body: bytes) -> None:
        assert other.dest is not None
        fwd = other.request(self.host, req.method, body, req.headers.get("Content-Type"))
        self.relays[id(fwd)] = (txn, req, leg)
        self._out.append(SendRequest(other, fwd, other.dest))

    def _on_media_timeout(self, event: MediaTimeout, now: float) -> None:
        if self.state is not State.CONNECTED:
            return
        self._log("call.media_timeout", "warning", idle=round(event.idle, 1))
        if self.info is not None:
            self.info.extra["reason"] = "media_timeout"
        # BYE both ways now; the talk time counts up to the last media
        self._hang_up(max(self.answered_now, now - event.idle))

    def _relay_response(self, leg: Leg, txn: ClientTransaction, resp: Response,
                        relay: tuple[ServerTransaction, Request, Leg]) -> None:
        origin_txn, origin_req, origin_leg = relay
        if resp.status >= 200:
            self.relays.pop(id(txn.request), None)  # the request we relayed
        if isinstance(txn, ClientInviteTransaction) and 200 <= resp.status < 300:
            self._send_ack(leg, txn)
        leg.dialog.receive_response(resp)  # a re-INVITE's or UPDATE's 2xx refreshes the target
        if resp.status == 100:
            return
        ctype = resp.headers.get("Content-Type")
        if self.offer_sdp is not None and resp.body and 200 <= resp.status < 300 \
                and origin_req.method in ("INVITE", "UPDATE") and origin_req.body:
            self.media_seq += 1
            self.held[self.media_seq] = (resp.status, resp.reason, resp.body, ctype, relay)
            self._out.append(MediaAnswer(resp.body, self._tag(origin_leg), self._tag(leg),
                                         self.media_seq))
            return
        self._respond(origin_txn, origin_req, origin_leg, resp.status, resp.reason,
                      resp.body, ctype)

    # -- requests from the legs' peers -------------------------------------------------

    def _on_ack(self, event: AckIn) -> None:
        attempt = self.attempt
        if event.leg is self.a and self.ack_pending and attempt is not None \
                and attempt.txn is not None:
            self.ack_pending = False
            self._send_ack(attempt.leg, attempt.txn, event.request.body,
                           event.request.headers.get("Content-Type"))

    def _on_cancel(self, event: CancelIn, now: float) -> None:
        if event.leg is not self.a or self.state in (State.CONNECTED, State.ENDED):
            return  # after the 2xx a CANCEL changes nothing (§9.2)
        self._open_in_routing()
        self._log("call.cancelled")
        self._respond_a(487)
        self._abandon_all()
        self._end("cancelled", "caller", 487, now)

    def _on_request(self, event: RequestIn, now: float) -> None:
        leg, txn, req = event.leg, event.transaction, event.request
        other = self.b if leg is self.a else self.a
        method = req.method
        try:
            leg.dialog.receive_request(req)
        except DialogError as exc:
            self._respond(txn, req, leg, exc.status)
            return
        if leg is not self.a and leg is not self.b:
            # a target we moved on from: its dialog is over for us
            self._respond(txn, req, leg, 200 if method == "BYE" else 481)
            return
        by: HangupBy = "caller" if leg is self.a else "callee"
        if method == "BYE":
            self._respond(txn, req, leg, 200)
            if self.state is State.CONNECTED:
                if other is not None:
                    self._send_bye(other)
                self._end("answered", by, 200, now)
                return
            # a BYE in an early dialog (§15.1.2): the INVITE is answered and the hunt over
            self._abandon_all()
            self._respond_a(487 if leg is self.a else 480)
            self._end("cancelled", by, 487, now)
            return
        if self.state is not State.CONNECTED or other is None or other.dest is None:
            self._respond(txn, req, leg, 491 if method == "INVITE" else 481)
            return
        # re-INVITE, UPDATE, INFO and friends: relayed to the other leg; an offer in an
        # anchored call goes through rtpengine first
        if self.offer_sdp is not None and method in ("INVITE", "UPDATE") and req.body:
            self.media_seq += 1
            self.reoffers[self.media_seq] = ((txn, req, leg), other)
            self._out.append(MediaOffer(req.body, self._tag(leg), self.record,
                                        self._tag(other), self.media_seq))
            return
        self._relay_request(txn, req, leg, other, req.body)

    # -- timeouts and timers -----------------------------------------------------------

    def _on_timeout(self, event: TimeoutIn, now: float) -> None:
        leg, txn, timer = event.leg, event.transaction, event.timer
        req = txn.request
        attempt = self.attempt
        if attempt is not None and req is attempt.invite \
                and attempt.phase is not Phase.ANSWERED:
            self.attempt = None
            self._out.append(CancelTimer(RING))
            self.last_code, self.last_reason, self.last_by = 408, "Request Timeout", "system"
            self._log("call.target_timeout", target=attempt.target.uri)
            self._next_target(now)
            return
        for forked in self.fork:
            if req is forked.invite:
                self.fork.remove(forked)
                self._log("call.target_timeout", target=forked.target.uri)
                self._fork_failed(forked, 408, "Request Timeout", "system", now)
                return
        if timer == "L" and leg is self.a and self.state is State.CONNECTED:
            # no ACK for our 2xx (§13.3.1.4): the caller's side is gone
            self._log("call.no_ack", "warning")
            self._hang_up(now)
            return
        relay = self.relays.pop(id(req), None)
        if relay is not None:
            origin_txn, origin_req, origin_leg = relay
            self._respond(origin_txn, origin_req, origin_leg, 408)
            return
        self.abandoned = [old for old in self.abandoned if old.invite is not req]

    def _on_timer(self, event: TimerFired, now: float) -> None:
        name = event.name
        attempt = self.attempt
        if name == RING and self.state in (State.CALLING, State.EARLY) and attempt is not None:
            self._log("call.ring_timeout", target=attempt.target.uri)
            self._abandon(attempt)
            self.last_code, self.last_reason = 480, "Temporarily Unavailable"
            self.last_by = "system"
            self._next_target(now)
        elif name == RING and self.state in (State.CALLING, State.EARLY) and self.fork:
            self._log("call.ring_timeout", targets=[a.target.uri for a in self.fork])
            self._abandon_all()
            self.last_code, self.last_reason = 480, "Temporarily Unavailable"
            self.last_by = "system"
            self._fail(now)
        elif name == MAX_DURATION and self.state is State.CONNECTED:
            self._log("call.max_duration")
            self._hang_up(now)
        else:
            raise CallStateError(self.id, self.state, f"timer {name}")

    def _on_terminate(self, now: float) -> None:
        """End the call from our side (shutdown grace over): BYE or 503 to the caller."""
        if self.state is State.ENDED:
            return
        if self.state is State.CONNECTED:
            self._hang_up(now)
            return
        self._open_in_routing()
        self._abandon_all()
        self._respond_a(503, headers=RETRY_AFTER)
        self._end("failed", "system", 503, now)

    def _hang_up(self, now: float) -> None:
        """We end an answered call: BYE to both legs."""
        if self.b is not None:
            self._send_bye(self.b)
        self._send_bye(self.a)
        self._end("answered", "system", 200, now)

    # -- the end -----------------------------------------------------------------------

    def _end(self, outcome: Outcome, hangup_by: HangupBy, code: int, now: float) -> None:
        self._goto(State.ENDED)
        self._out.append(Finished())
        if self.offer_sdp is not None or self.media_wait is not None:
            self._out.append(MediaDelete(self.invite.from_.tag or "", self.record))
        info = self.info
        if info is None:
            self._log("call.ended", outcome=outcome, sip_code=code, hangup_by=hangup_by)
            return
        info.ended_at = self._wall(now)
        info.outcome = outcome
        info.hangup_by = hangup_by
        if info.sip_code is None:
            info.sip_code = code
        attribution = info.extra.get("attribution")
        b = self.b
        # the canonical line of the call: everything that matters about it, once
        self._log(
            "call.ended", tracker=info.tracker.id, carrier=info.carrier,
            attribution=getattr(attribution, "kind", None), outcome=outcome,
            sip_code=info.sip_code, hangup_by=hangup_by, ring_seconds=info.ring_seconds,
            talk_seconds=info.talk_seconds, target=info.target,
            a_call_id=self.a.dialog.call_id, b_call_id=b.dialog.call_id if b else None,
        )
        self._out.append(Notify("ended", info))


def _outcome_for(code: int) -> Outcome:
    if code in (486, 600, 603):
        return "busy"
    if code in (408, 480, 487):
        return "no_answer"
    return "failed"
