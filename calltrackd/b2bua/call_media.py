"""Media anchoring of a call (the tracker's `media = "anchor"`, rtpengine configured).

`MediaCall` is the part of the call that goes through rtpengine: the caller's SDP offered
before the first INVITE (the INVITE waits in ROUTING/RESOLVING for MediaDone), a target's
1xx/2xx with SDP held while MediaAnswer runs and then relayed with rtpengine's SDP,
re-INVITE and UPDATE offers in the dialog and their answers, and MediaTimeout (no RTP)
hanging up an answered call. A MediaDone with an error means the original SDP goes on
(tracking never costs a call). Relaying in-dialog requests and their answers between
the legs lives here too, as it is where the SDP may be swapped. Sans-I/O like call.py.
"""

from __future__ import annotations

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
        offer (late offer: the SDP comes in the ACK) goes direct."""
        self.media_offered = True
        if self.invite.body:
            self.media_wait = (target, uri, addr)
            self._out.append(MediaOffer(self.invite.body, self.invite.from_.tag or "",
                                        self.record))
            return True
        self._media_direct("late_offer")
        return False

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

    def _on_media_timeout(self, event: MediaTimeout, now: float) -> None:
        if self.state is not State.CONNECTED:
            return
        self._log("call.media_timeout", "warning", idle=round(event.idle, 1))
        if self.info is not None:
            self.info.extra["reason"] = "media_timeout"
        # BYE both ways now; the talk time counts up to the last media
        self._hang_up(max(self.answered_now, now - event.idle))

    def _relay_response(self, leg: Leg, txn: ClientTransaction, resp: Response,
                        relay: Relay) -> None:
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
