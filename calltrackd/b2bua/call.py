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
SDP. Late offer (an INVITE without SDP): the target's 1xx/2xx SDP is the offer
(MediaOffer late, from the target's side), the caller's ACK the answer (MediaAnswer;
B's ACK waits for it). A MediaDone with an error (rtpengine down, slow past the ng
budget) means the original SDP goes on: tracking never costs a call. The end emits
MediaDelete; a MediaTimeout (no RTP for `media_timeout`) hangs up an answered call, by
"system", unless the call is on hold (`on_hold`: the engine does not check it).

An event `_ACCEPTS` does not list for the state, or a move `_NEXT` does not list, raises
`CallStateError` naming the state and the event.

The modules of the call, each built on the one before: call_core.py (the states and
their tables, the call's attributes and its common moves: answers, ACK and BYE, the
record, the B legs, the end), call_media.py (anchoring: MediaOffer, MediaAnswer,
MediaDone, MediaTimeout, and relaying in-dialog requests), call_fork.py (hunt
`simultaneous`), and this one: `Call`, its one entry point `handle`, the hunt in order,
the responses, the requests from the legs' peers, the timeouts and timers.
"""

from __future__ import annotations

from ..sip.dialog import DialogError
from ..sip.digest import authorization_for
from ..sip.endpoint import Address
from ..sip.message import Response
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import ForwardTarget, HangupBy
from .call_core import MAX_DURATION, RETRY_AFTER, RING, CallStateError, State
from .call_fork import ForkingCall
from .commands import (
    AckIn,
    CallEvent,
    CallInfo,
    CancelIn,
    CancelTimer,
    Command,
    MediaDone,
    MediaTimeout,
    Notify,
    RegisterDialog,
    RequestIn,
    Resolve,
    Resolved,
    ResolveFailed,
    ResponseIn,
    Routed,
    SendRequest,
    StartTimer,
    TimeoutIn,
    TimerFired,
)
from .legs import Attempt, Leg, Phase, literal_address, retry_invite

__all__ = ["Call", "CallInfo", "CallStateError", "Leg", "State"]


class Call(ForkingCall):
    """One call: create it for a new INVITE, feed it events with `handle`."""

    __slots__ = ()

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
            self._on_ack(event, now)
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

    # -- the hunt in order -------------------------------------------------------------

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
        if self.anchor and not self.media_offered and self._offer_first(target, uri, addr):
            return  # the INVITE waits for rtpengine's offer (MediaDone)
        attempt = self._invite(target, uri, addr)
        self.b = attempt.leg
        self.attempt = attempt
        info.target = target.uri
        self._goto(State.CALLING)
        self._out.append(StartTimer(RING, now + self.ring_timeout))
        self._out.append(Notify("forwarded", info, now - self._t0))

    # -- responses ---------------------------------------------------------------------

    def _on_response(self, event: ResponseIn, now: float) -> None:
        txn, resp, leg = event.transaction, event.response, event.leg
        req = txn.request
        attempt = self.attempt
        if attempt is not None and req is attempt.invite:
            assert isinstance(txn, ClientInviteTransaction)
            self._on_invite_response(attempt, txn, resp, now)
            return
        if self.fork and self._on_fork_response(txn, resp, now):
            return
        relay = self.relays.get(id(req))
        if relay is not None:
            self._relay_response(leg, txn, resp, relay, now)
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

    # -- requests from the legs' peers -------------------------------------------------

    def _on_ack(self, event: AckIn, now: float) -> None:
        if event.leg is not self.a or not self.ack_pending:
            return
        body, ctype = event.request.body, event.request.headers.get("Content-Type")
        if not self._answer_in_ack(body, ctype, now):  # anchored: after rtpengine's answer
            self._ack_b(body, ctype)

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
        self._relay_in_dialog(txn, req, leg, other)  # re-INVITE, UPDATE, INFO and friends

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
        if self.fork and self._on_fork_timeout(req, now):
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
            self._fork_ring_timeout(now)
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
