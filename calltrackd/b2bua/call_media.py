"""Media anchoring of a call (the tracker's `media = "anchor"`, rtpengine configured).

`MediaCall` is the part of the call that goes through rtpengine: the caller's SDP offered
before the first INVITE (the INVITE waits in ROUTING/RESOLVING for MediaDone), a target's
1xx/2xx with SDP held while MediaAnswer runs and then relayed with rtpengine's SDP,
re-INVITE and UPDATE offers in the dialog and their answers, the late offer (an INVITE
without SDP: the target's 1xx/2xx SDP offered from its side, the caller's ACK the
answer), hold (`on_hold`, from each side's latest SDP: the media timeout waits), and
MediaTimeout (no RTP) hanging up an answered call. A MediaDone with an error means the
original SDP goes on (tracking never costs a call). Relaying in-dialog requests and
their answers between the legs lives here too, as it is where the SDP may be swapped.
Sans-I/O like call.py.
"""

from __future__ import annotations

from ..media.sdp import on_hold as sdp_on_hold
from ..sip.endpoint import Address, ClientTransaction, ServerTransaction
from ..sip.message import Request, Response
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipURI
from ..tracking.model import ForwardTarget
from .call_core import CallCore, Relay, State
from .commands import MediaAnswer, MediaDone, MediaOffer, MediaTimeout
from .legs import Leg


class MediaCall(CallCore):
    """The call's media anchoring and in-dialog relaying (see the module's docstring)."""

    __slots__ = ()

    def _offer_first(self, target: ForwardTarget, uri: SipURI, addr: Address) -> bool:
        """Before the first INVITE of an anchored call: the caller's SDP to rtpengine.
        True when the INVITE to `target` waits for the MediaDone; a call without an
        offer (late offer) goes out without SDP: the target's 1xx/2xx SDP is then the
        offer (`_relay_to_a`), the caller's ACK the answer (`_answer_in_ack`)."""
        self.media_offered = True
        body = self.invite.body
        if body:
            self._note_sdp(self.a, body)
            self.media_wait = (target, uri, addr)
            self._out.append(MediaOffer(body, self.invite.from_.tag or "", self.record))
            return True
        self.late_offer = True
        return False

    def _relay_to_a(self, resp: Response) -> None:
        """A target's 1xx/2xx to the caller; with SDP on an anchored call, held until
        rtpengine has answered it (MediaDone), or, late offer, taken it as the offer
        from the target's side."""
        ctype = resp.headers.get("Content-Type")
        body = resp.body
        if body and self.anchor:
            self._note_sdp(self.b, body)
        late = self.late_offer and self.anchor
        if not body or (self.offer_sdp is None and not late):
            self._respond_a(resp.status, resp.reason, body, ctype)
            return
        self.media_seq += 1
        self.held[self.media_seq] = (resp.status, resp.reason, body, ctype, None)
        a_tag, b_tag = self.invite.from_.tag or "", resp.to.tag or ""
        if late:
            self.media_late = True  # rtpengine may know the call now: delete it at the end
            self._out.append(MediaOffer(body, b_tag, self.record, a_tag, self.media_seq,
                                        late=True))
        else:
            self._out.append(MediaAnswer(body, a_tag, b_tag, self.media_seq))

    def _answer_in_ack(self, body: bytes, ctype: str | None, now: float) -> bool:
        """Late offer: the caller's ACK carries the answer to rtpengine's offer; True
        when B's ACK waits for rtpengine's `answer` (MediaDone) to carry its SDP."""
        b = self.b
        if not body or not self.late_answer or b is None:
            return False
        self.late_answer = False
        self._note_sdp(self.a, body, now)
        self.media_seq += 1
        self.ack_wait = (self.media_seq, body, ctype)
        self._out.append(MediaAnswer(body, b.dialog.remote_tag or "",
                                     self.invite.from_.tag or "", self.media_seq))
        return True

    def _ack_b(self, body: bytes, ctype: str | None) -> None:
        """Late offer: B's ACK for its 2xx, with the answer the caller's ACK carried."""
        attempt = self.attempt
        if self.ack_pending and attempt is not None and attempt.txn is not None:
            self.ack_pending = False
            self._send_ack(attempt.leg, attempt.txn, body, ctype)

    def _note_sdp(self, leg: Leg | None, body: bytes, now: float | None = None,
                  answerer: Leg | None = None, answer: bytes = b"") -> None:
        """An SDP sent by `leg`'s peer in an anchored call (and, an exchange in the
        dialog, the `answer` of `answerer`'s peer): is that side on hold now? While
        either side is (sendonly, recvonly, inactive, or address 0.0.0.0), the media
        timeout is suspended; taken off hold at `now` (None: before or at the answer),
        the silence is counted from then (`resumed_at`)."""
        for side, sdp in ((leg, body), (answerer, answer)):
            if side is self.a:
                self.hold_a = sdp_on_hold(sdp)
            elif side is not None:
                self.hold_b = sdp_on_hold(sdp)
        on_hold = self.hold_a or self.hold_b
        if on_hold != self.on_hold:
            self.on_hold = on_hold
            if not on_hold:
                self.resumed_at = self.answered_now if now is None else now
            self._log("call.media_hold" if on_hold else "call.media_resumed")

    def _tag(self, leg: Leg) -> str:
        """The tag rtpengine knows a side of the call by: its peer's SIP tag."""
        if leg is self.a:
            return self.invite.from_.tag or ""
        return leg.dialog.remote_tag or ""

    def _media_direct(self, reason: str) -> None:
        """No anchoring for this call (the record says why)."""
        if self.info is not None:
            self.info.extra["media"] = {"mode": "direct", "reason": reason}
        self._log("call.media_direct", "warning", reason=reason)

    def _on_media(self, event: MediaDone, now: float) -> None:
        ack = self.ack_wait
        if ack is not None and event.seq == ack[0]:
            self._on_ack_answer(event, ack[1], ack[2])
            return
        if event.kind == "offer" and event.seq and event.seq not in self.held:
            self._on_reoffer(event)
            return
        if event.kind == "offer" and not event.seq:  # the call's first offer
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
        if event.kind == "offer":  # late offer: rtpengine's offer to the caller
            self._on_late_offer(event, status, reason, body, ctype)
            return
        if event.sdp is not None and event.error is None:
            body = event.sdp
        else:
            # the callee's own SDP: the caller sends to it directly, the callee still
            # through rtpengine (which knows the caller from the offer)
            self._media_direct(f"answer: {event.error}")
        self._respond_a(status, reason, body, ctype)

    def _on_late_offer(self, event: MediaDone, status: int, reason: str, body: bytes,
                       ctype: str | None) -> None:
        """The target's 1xx/2xx, its SDP taken by rtpengine as the offer, to the caller."""
        if event.sdp is not None and event.error is None:
            body = event.sdp
            if self.offer_sdp is None and self.info is not None:
                self.info.extra["media"] = {"mode": "anchor", "recorded": self.record,
                                            "late_offer": True}
            self.offer_sdp = event.sdp
            self.late_answer = status >= 200  # the caller's ACK answers rtpengine's SDP
        else:
            self._media_direct(f"late offer: {event.error}")
            if self.offer_sdp is None:
                self.media_late = False  # rtpengine has no call to delete
        self._respond_a(status, reason, body, ctype)

    def _on_ack_answer(self, event: MediaDone, body: bytes, ctype: str | None) -> None:
        """rtpengine took the caller's answer (late offer): B's ACK carries its SDP."""
        self.ack_wait = None
        if event.sdp is not None and event.error is None:
            body = event.sdp
        else:
            self._media_direct(f"answer: {event.error}")
        self._ack_b(body, ctype)

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

    def _on_media_timeout(self, event: MediaTimeout, now: float) -> None:
        if self.state is not State.CONNECTED:
            return
        self._log("call.media_timeout", "warning", idle=round(event.idle, 1))
        if self.info is not None:
            self.info.extra["reason"] = "media_timeout"
        # BYE both ways now; the talk time counts up to the last media
        self._hang_up(max(self.answered_now, now - event.idle))

    def _relay_response(self, leg: Leg, txn: ClientTransaction, resp: Response,
                        relay: Relay, now: float) -> None:
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
            # the exchange is done: its offer and answer say whether the call is on hold
            self._note_sdp(origin_leg, origin_req.body, now, leg, resp.body)
            self.media_seq += 1
            self.held[self.media_seq] = (resp.status, resp.reason, resp.body, ctype, relay)
            self._out.append(MediaAnswer(resp.body, self._tag(origin_leg), self._tag(leg),
                                         self.media_seq))
            return
        self._respond(origin_txn, origin_req, origin_leg, resp.status, resp.reason,
                      resp.body, ctype)

    def _relay_in_dialog(self, txn: ServerTransaction, req: Request, leg: Leg,
                         other: Leg) -> None:
        """A re-INVITE, UPDATE, INFO and friends to the other leg; an offer in an
        anchored call goes through rtpengine first."""
        if self.offer_sdp is not None and req.method in ("INVITE", "UPDATE") and req.body:
            self.media_seq += 1
            self.reoffers[self.media_seq] = ((txn, req, leg), other)
            self._out.append(MediaOffer(req.body, self._tag(leg), self.record,
                                        self._tag(other), self.media_seq))
            return
        self._relay_request(txn, req, leg, other, req.body)
