"""The state and the common moves of a call (call.py's `Call` is built on them).

`State` and the tables of what each state accepts and where it may go; `CallCore`, the
call's attributes (its legs, its attempts at the targets, the fork, the media anchoring
state, the record) and what every part of the call does the same way: move to a state,
log, answer the caller or a request in a dialog, ACK and BYE, open the record, send an
INVITE to a target on a new B leg, give up on an attempt, hang up, and end (the CDR).
Sans-I/O like the call: no asyncio, no clock reads, no transport; what it does goes out
as commands. The parts built on it: call_media.py (anchoring through rtpengine),
call_fork.py (hunt `simultaneous`), call.py (the hunt, the events, the theory of
operation).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Literal

from ..sip.dialog import Dialog, make_cancel
from ..sip.endpoint import Address, ServerTransaction
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipURI
from ..tracking.model import ForwardTarget, HangupBy, Outcome
from .commands import (
    AckIn,
    CallInfo,
    CancelIn,
    CancelTimer,
    Command,
    Finished,
    Log,
    MediaDelete,
    MediaDone,
    MediaTimeout,
    Notify,
    RegisterDialog,
    RequestIn,
    Resolved,
    ResolveFailed,
    Respond,
    ResponseIn,
    Routed,
    SendAck,
    SendRequest,
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
    outgoing_invite,
    peer_address,
    response,
)
from .routing import Route

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



class CallCore:
    """A call's state and its common moves; `Call` (call.py) is the one to create."""

    __slots__ = ("_accepts", "_out", "_t0", "_wall0", "a", "a_txn", "abandoned", "ack_pending",
                 "ack_wait", "anchor", "answered_now", "attempt", "b", "fork", "held", "hold_a",
                 "hold_b", "host", "id", "info", "invite", "last_by", "last_code", "last_reason",
                 "late_answer", "late_offer", "legs", "max_duration", "media_late",
                 "media_offered", "media_seq", "media_wait", "offer_sdp", "on_hold", "record",
                 "relays", "reoffers", "resolving", "resumed_at", "ring_timeout", "route",
                 "source", "state", "targets", "user_agent")

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
        # rtpengine's SDP of the call's first offer (to the targets; late offer: to the
        # caller); not None: the call is anchored
        self.offer_sdp: bytes | None = None
        # late offer (an INVITE without SDP): the target's 1xx/2xx SDP is offered to
        # rtpengine from its side, the caller's ACK carries the answer
        self.late_offer = False
        self.media_late = False  # a late offer went to rtpengine: delete the call at the end
        self.late_answer = False  # the caller got rtpengine's offer in the 2xx: its ACK answers
        self.ack_wait: tuple[int, bytes, str | None] | None = None  # seq, the ACK's SDP
        # hold (anchored calls): a side's latest SDP puts it on hold; the media timeout
        # waits while `on_hold`, and counts the silence from `resumed_at` after it
        self.hold_a = False
        self.hold_b = False
        self.on_hold = False
        self.resumed_at = 0.0
        self.media_wait: tuple[ForwardTarget, SipURI, Address] | None = None
        self.media_seq = 0
        # responses held while rtpengine answers: seq → status, reason, the answerer's
        # own SDP, its Content-Type, and the relay it answers (None: the caller's INVITE)
        self.held: dict[int, tuple[int, str, bytes, str | None, Relay | None]] = {}
        # re-INVITEs/UPDATEs held while rtpengine takes their offer: seq → relay, request
        self.reoffers: dict[int, tuple[Relay, Leg]] = {}

    # -- what the call (call.py) provides to the parts below it ------------------------

    def _send_invite(self, target: ForwardTarget, uri: SipURI, addr: Address,
                     now: float) -> None:
        """The hunt's INVITE to `target` at `addr` (after the media offer, when anchored)."""
        raise NotImplementedError

    def _on_answer(self, attempt: Attempt, txn: ClientInviteTransaction, resp: Response,
                   now: float) -> None:
        """A target's 2xx: the call is answered."""
        raise NotImplementedError

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

    def _relay_request(self, txn: ServerTransaction, req: Request, leg: Leg, other: Leg,
                       body: bytes) -> None:
        assert other.dest is not None
        fwd = other.request(self.host, req.method, body, req.headers.get("Content-Type"))
        self.relays[id(fwd)] = (txn, req, leg)
        self._out.append(SendRequest(other, fwd, other.dest))

    # -- the record and the B legs -----------------------------------------------------

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
        if self.offer_sdp is not None and not self.late_offer:
            req.body = self.offer_sdp
        self.legs.append(leg)
        self._out.append(RegisterDialog(leg))
        self._out.append(SendRequest(leg, req, addr))
        return Attempt(target, leg, req)

    # -- giving up, hanging up, the end ------------------------------------------------

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

    def _hang_up(self, now: float) -> None:
        """We end an answered call: BYE to both legs."""
        if self.b is not None:
            self._send_bye(self.b)
        self._send_bye(self.a)
        self._end("answered", "system", 200, now)

    def _end(self, outcome: Outcome, hangup_by: HangupBy, code: int, now: float) -> None:
        self._goto(State.ENDED)
        self._out.append(Finished())
        if self.offer_sdp is not None or self.media_wait is not None or self.media_late:
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
