"""One call: the caller's leg (A, we are its UAS) and the callee's leg (B, we are its UAC).

The call hunts through the tracker's forward targets in order, relays provisional and
final responses back to the caller, then relays in-dialog requests both ways until a BYE
(or the max duration) ends it. Its outcome and timestamps feed the CDR.

Failover rule: a target that answers 4xx or 5xx, times out (Timer B), or rings longer
than `ring_timeout`, hands the call to the next target; a 6xx (global failure, RFC 3261
§21.6, e.g. 600 Busy Everywhere, 603 Decline) ends the hunt, as does the last target. So
486 Busy Here moves on when more targets are configured and ends the call otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import structlog

from .. import ids
from ..sip.dialog import TARGET_REFRESH, Dialog, DialogError, make_cancel
from ..sip.endpoint import Address, ClientTransaction, ServerTransaction, new_branch, new_tag
from ..sip.message import Request, Response, Via, response_for
from ..sip.transaction import ClientInviteTransaction
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import ForwardTarget, HangupBy, Outcome, Tracker
from .guard import canonical_host

if TYPE_CHECKING:
    from .engine import Engine

log = structlog.get_logger("calltrackd.call")

State = Literal["routing", "calling", "early", "connected", "ended"]


@dataclass(slots=True)
class CallInfo:
    """What the outside world sees of a call; the CDR is built from it."""

    id: str
    tracker: Tracker
    did: str
    caller: str
    carrier: str
    started_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None
    sip_code: int | None = None
    hangup_by: HangupBy | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # for hooks (attribution, ...)

    @property
    def ring_seconds(self) -> float | None:
        end = self.answered_at or self.ended_at
        return None if end is None else round((end - self.started_at).total_seconds(), 3)

    @property
    def talk_seconds(self) -> float | None:
        if self.answered_at is None:
            return 0.0 if self.ended_at else None
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.answered_at).total_seconds(), 3)


class Leg:
    """One side of the call: its dialog (RFC 3261 §12) and how we reach the peer.

    A leg refers to its call weakly: the call holds its legs, and the transactions of a
    leg (which outlive the call by up to 32 s) hold the leg, so a strong reference back
    would make every call a reference cycle that only the garbage collector could free.
    The engine keeps an ended call alive as long as its transactions may still report.
    """

    __slots__ = ("_call", "dest", "dialog", "origin", "side", "transport")

    def __init__(self, call: Call, side: Literal["a", "b"], dialog: Dialog,
                 transport: str, origin: str) -> None:
        self._call = weakref.ref(call)
        self.side = side
        self.dialog = dialog
        self.transport = transport
        self.origin = canonical_host(origin)  # the INVITE's source, or the target we called
        self.dest: Address | None = None

    @property
    def call(self) -> Call | None:
        return self._call()

    def admits(self, source: Address) -> bool:
        """Whether a request in this dialog may come from `source`: the leg's transport,
        and the host the dialog began with, the one we send to, or the dialog's next hop
        (its first Record-Route, else the peer's Contact). Ports are not compared: TCP
        peers connect from ephemeral ports, and many SBCs send from another port than
        the one they listen on."""
        if source.transport != self.transport:
            return False
        host = canonical_host(source.host)
        if host == self.origin or (self.dest is not None
                                   and host == canonical_host(self.dest.host)):
            return True
        try:
            hop = self.dialog.next_hop()
        except SipSyntaxError:
            return False
        return host == canonical_host(hop.host_bare)

    def request(self, method: str, body: bytes = b"", content_type: str | None = None,
                cseq: int | None = None) -> Request:
        """An in-dialog request toward the peer, with our Via (and Contact, when the
        request refreshes the target) for the way it goes out."""
        assert self.dest is not None
        call = self._call()
        assert call is not None  # only a live call sends
        host, port = call.engine.stack.local_hostport(self.transport, self.dest.host)
        via = Via.own(self.transport, host, port, new_branch())
        contact = call.contact(self) if method in TARGET_REFRESH else None
        return self.dialog.request(method, via, contact, body, content_type, cseq)


@dataclass(slots=True)
class Attempt:
    """One try at one forward target."""

    target: ForwardTarget
    leg: Leg
    invite: Request
    txn: ClientTransaction | None = None
    provisional: bool = False
    cancel_pending: bool = False
    answered: bool = False
    auth_tried: bool = False
    timer: asyncio.TimerHandle | None = None


class Call:
    def __init__(
        self,
        *,
        engine: Engine,
        tracker: Tracker,
        did: str,
        caller: str,
        carrier: str,
        invite: Request,
        transaction: ServerTransaction,
        source: Address,
        started: float,
    ) -> None:
        self.engine = engine
        self.id = "c_" + ids.token_urlsafe(12)
        self._log: Any = None
        self.info = CallInfo(
            id=self.id, tracker=tracker, did=did, caller=caller, carrier=carrier,
            started_at=datetime.fromtimestamp(started, UTC),
        )
        self.invite = invite
        self.a_txn = transaction
        self.source = source
        self.mono_start = time.monotonic()
        self.state: State = "routing"
        self.a = Leg(self, "a", Dialog.uas(invite, new_tag()), source.transport,
                     source.host)
        # an unresolvable next hop (a name) falls back to where the INVITE came from
        self.a.dest = self._peer_address(self.a) or source
        self.b: Leg | None = None
        self.targets = list(tracker.forward)
        self.attempt: Attempt | None = None
        self.last_code = 0
        self.last_reason = ""
        self.last_by: HangupBy = "callee"
        self.end_timer: asyncio.TimerHandle | None = None
        self.relays: dict[int, tuple[ServerTransaction, Request]] = {}  # id(client txn)
        self.a_ack_pending: Response | None = None  # late offer: B's ACK waits for A's body
        transaction.user = self.a
        engine.register_dialog(self.a.dialog.call_id, self.a.dialog.local_tag, self, self.a)

    # -- helpers -----------------------------------------------------------------------

    @property
    def log(self) -> Any:
        # bound once per call: bind() builds a new logger and context dict every time
        bound = self._log
        if bound is None:
            bound = self._log = log.bind(call=self.id, did=self.info.did,
                                         caller=self.info.caller)
        return bound

    def now(self) -> float:
        return self.engine.stack.clock()

    def contact(self, leg: Leg) -> str:
        toward = leg.dest.host if leg.dest else "127.0.0.1"
        host, port = self.engine.stack.local_hostport(leg.transport, toward)
        return f"<sip:calltrackd@{host}:{port};transport={leg.transport}>"

    def dialog_keys(self) -> list[tuple[str, str]]:
        keys = [(self.a.dialog.call_id, self.a.dialog.local_tag)]
        if self.b is not None:
            keys.append((self.b.dialog.call_id, self.b.dialog.local_tag))
        return keys

    @staticmethod
    def _peer_address(leg: Leg) -> Address | None:
        """Where in-dialog requests to the peer go (first route, else remote target) when
        that is an IP literal on the leg's transport; None when it would take DNS or
        another transport, and the leg keeps the address it has."""
        try:
            addr = literal_address(leg.dialog.next_hop())
        except SipSyntaxError:
            return None
        if addr is None or addr.transport != leg.transport:
            return None
        return addr

    def _respond_a(self, status: int, reason: str | None = None, body: bytes = b"",
                   content_type: str | None = None, extra: dict[str, str] | None = None,
                   txn: ServerTransaction | None = None, request: Request | None = None) -> None:
        req = request or self.invite
        resp = response_for(req, status, reason)
        resp.headers.set("To", self.a.dialog.local)
        if 100 < status < 300 and req.method in ("INVITE", "UPDATE"):
            resp.headers.add("Contact", self.contact(self.a))
            if req is self.invite:
                # §12.1.1: the dialog's route set travels back in 1xx/2xx responses
                for rr in req.headers.get_all("Record-Route"):
                    resp.headers.add("Record-Route", rr)
        for name, value in (extra or {}).items():
            resp.headers.add(name, value)
        if body:
            resp.headers.add("Content-Type", content_type or "application/sdp")
            resp.body = body
        self.engine.stack.layer.respond(txn or self.a_txn, resp, self.now())
        self.engine.stack.flush()

    # -- the hunt ----------------------------------------------------------------------

    def start(self) -> None:
        self._respond_a(100)
        self.engine.hooks.call_started(self.info)
        self.log.info("call started", tracker=self.info.tracker.id, carrier=self.info.carrier)
        self._next_target()

    def _next_target(self) -> None:
        while self.targets:
            target = self.targets.pop(0)
            try:
                uri = SipURI.parse(target.uri)
            except SipSyntaxError:
                self.log.warning("bad forward target", target=target.uri)
                continue
            addr = literal_address(uri)
            if addr is not None:
                self._send_invite(target, uri, addr)
            else:
                self.engine.stack.loop.create_task(self._resolve_and_send(target, uri))
            return
        self._fail()

    async def _resolve_and_send(self, target: ForwardTarget, uri: SipURI) -> None:
        try:
            addr = await resolve(uri)
        except OSError as exc:
            self.log.warning("cannot resolve target", target=target.uri, error=str(exc))
            self.last_code, self.last_reason = 503, "Service Unavailable"
            self.last_by = "system"
            addr = None
        if self.state == "ended":
            return
        if addr is None:
            self._next_target()
        else:
            self._send_invite(target, uri, addr)

    def _send_invite(self, target: ForwardTarget, uri: SipURI, addr: Address) -> None:
        inv = self.invite
        host, _ = self.engine.stack.local_hostport(addr.transport, addr.host)
        ruri = uri if uri.user else uri.with_(user=self.info.did)
        ruri = ruri.with_(headers=None)
        from_ = inv.from_
        caller_user = from_.uri.user or "anonymous"
        disp = f"{from_.display} " if from_.display else ""
        tag = new_tag()
        dialog = Dialog(
            ids.token_urlsafe(16) + "@calltrackd", tag,
            f"{disp}<sip:{caller_user}@{host}>;tag={tag}",
            f"<sip:{self.info.did}@{ruri.host}{f':{ruri.port}' if ruri.port else ''}>",
            str(ruri),
        )
        leg = Leg(self, "b", dialog, addr.transport, addr.host)
        leg.dest = addr
        mf = inv.headers.get("Max-Forwards")
        req = leg.request("INVITE", inv.body, inv.headers.get("Content-Type"))
        req.headers.set("Max-Forwards", str(int(mf) - 1 if mf else 69))
        req.headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO")
        req.headers.add("X-Calltrackd-Call", self.id)
        req.headers.add("User-Agent", self.engine.settings().sip.user_agent)
        self.b = leg
        self.engine.register_dialog(dialog.call_id, tag, self, leg)
        attempt = Attempt(target=target, leg=leg, invite=req)
        self.attempt = attempt
        self.info.target = target.uri
        self.state = "calling"
        self._transmit_invite(attempt, req)
        ring = self.info.tracker.ring_timeout
        attempt.timer = self.engine.stack.loop.call_later(
            ring, self._ring_timeout, attempt)
        self.engine.hooks.call_forwarded(self.info, time.monotonic() - self.mono_start)

    def _transmit_invite(self, attempt: Attempt, req: Request) -> None:
        assert attempt.leg.dest is not None
        txn = self.engine.stack.layer.send_request(req, attempt.leg.dest, self.now())
        txn.user = attempt.leg
        attempt.txn = txn
        attempt.invite = req
        self.engine.stack.flush()

    def _ring_timeout(self, attempt: Attempt) -> None:
        attempt.timer = None  # a handle that ran keeps its callback: no cycle through it
        if attempt is not self.attempt or attempt.answered or self.state == "ended":
            return
        self.log.info("ring timeout", target=attempt.target.uri)
        self._cancel_attempt(attempt)
        self.last_code, self.last_reason = 480, "Temporarily Unavailable"
        self.last_by = "system"
        self.attempt = None
        self._next_target()

    def _cancel_attempt(self, attempt: Attempt) -> None:
        if attempt.timer:
            attempt.timer.cancel()
            attempt.timer = None
        if not attempt.provisional:
            attempt.cancel_pending = True  # §9.1: CANCEL only after a provisional
            return
        cancel = make_cancel(attempt.invite)
        assert attempt.leg.dest is not None
        txn = self.engine.stack.layer.send_request(cancel, attempt.leg.dest, self.now())
        txn.user = None
        self.engine.stack.flush()

    def _fail(self) -> None:
        """No target answered: the last target's final code goes to the caller."""
        code = self.last_code or 480
        self._respond_a(code, self.last_reason or None)
        self._end(_outcome_for(code), self.last_by, code)

    # -- events from the engine --------------------------------------------------------

    def on_response(self, leg: Leg, txn: ClientTransaction, resp: Response) -> None:
        attempt = self.attempt
        if attempt is not None and txn is attempt.txn:
            self._on_invite_response(attempt, resp)
            return
        relay = self.relays.get(id(txn))
        if relay is not None:
            self._relay_response(leg, txn, resp, *relay)
            return
        if isinstance(txn, ClientInviteTransaction) and 200 <= resp.status < 300:
            # a stale attempt answered after we moved on: take it down
            self._ack_and_bye(leg, txn, resp)

    def _on_invite_response(self, attempt: Attempt, resp: Response) -> None:
        code = resp.status
        leg = attempt.leg
        if code < 200:
            attempt.provisional = True
            if attempt.cancel_pending:
                attempt.cancel_pending = False
                self._cancel_attempt(attempt)
                return
            if code == 100 or self.state == "ended":
                return
            leg.dialog.receive_response(resp)
            self.state = "early"
            self._respond_a(code, resp.reason, resp.body, resp.headers.get("Content-Type"))
            return
        if attempt.timer:
            attempt.timer.cancel()
            attempt.timer = None
        if code < 300:
            self._on_answer(attempt, resp)
            return
        leg.dialog.receive_response(resp)
        self.attempt = None
        if code in (401, 407) and attempt.target.username and not attempt.auth_tried:
            if self._authenticate(attempt, resp):
                return
        self.last_code, self.last_reason = code, resp.reason
        self.last_by = "callee"
        self.log.info("target failed", target=attempt.target.uri, code=code)
        if self.state == "ended":
            return
        if code >= 600:
            self.targets.clear()
        self._next_target()

    def _authenticate(self, attempt: Attempt, resp: Response) -> bool:
        """Retry the INVITE once with digest credentials (RFC 3261 §22.2)."""
        from ..sip.digest import authorization_for

        target = attempt.target
        assert target.username is not None
        header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        challenge = resp.headers.get(header)
        if not challenge:
            return False
        old = attempt.invite
        leg = attempt.leg
        req = leg.request("INVITE", old.body, old.headers.get("Content-Type"))
        for name, value in old.headers:
            if name not in ("Via", "CSeq", "Content-Type", "Contact", "Route", "From", "To",
                            "Call-ID", "Max-Forwards", "Content-Length"):
                req.headers.add(name, value)
        req.headers.set("Max-Forwards", old.headers.get("Max-Forwards") or "70")
        credentials = authorization_for(challenge, "INVITE", req.uri, target.username,
                                        target.password or "")
        if credentials is None:
            return False
        req.headers.add("Authorization" if resp.status == 401 else "Proxy-Authorization",
                        credentials)
        attempt.auth_tried = True
        attempt.provisional = False
        self.attempt = attempt
        self._transmit_invite(attempt, req)
        attempt.timer = self.engine.stack.loop.call_later(
            self.info.tracker.ring_timeout, self._ring_timeout, attempt)
        return True

    def _on_answer(self, attempt: Attempt, resp: Response) -> None:
        leg = attempt.leg
        assert isinstance(attempt.txn, ClientInviteTransaction)
        leg.dialog.receive_response(resp)
        leg.dest = self._peer_address(leg) or leg.dest
        attempt.answered = True
        if self.state == "ended":
            self._ack_and_bye(leg, attempt.txn, resp)
            return
        if not self.invite.body and resp.body:
            # late offer: the caller's ACK carries the answer for the callee
            self.a_ack_pending = resp
        else:
            self._send_ack(leg, attempt.txn, attempt.invite.cseq[0])
        self.state = "connected"
        self.info.answered_at = datetime.now(UTC)
        self.info.sip_code = resp.status
        self._respond_a(resp.status, resp.reason, resp.body, resp.headers.get("Content-Type"))
        self.log.info("call answered", target=attempt.target.uri)
        self.engine.hooks.call_answered(self.info)
        limit = self.engine.settings().sip.max_call_duration
        self.end_timer = self.engine.stack.loop.call_later(limit, self._max_duration)

    def _send_ack(self, leg: Leg, txn: ClientInviteTransaction, cseq: int, body: bytes = b"",
                  content_type: str | None = None) -> None:
        ack = leg.request("ACK", body, content_type, cseq=cseq)
        self.engine.stack.layer.send_ack(txn, ack)
        self.engine.stack.flush()

    def _ack_and_bye(self, leg: Leg, txn: ClientInviteTransaction, resp: Response) -> None:
        leg.dialog.receive_response(resp)
        leg.dest = self._peer_address(leg) or leg.dest
        try:
            self._send_ack(leg, txn, txn.request.cseq[0])
        except Exception:  # the transaction may already hold an ACK
            pass
        self._send_bye(leg)

    def _send_bye(self, leg: Leg) -> None:
        if leg.dest is None:
            return
        bye = leg.request("BYE")
        txn = self.engine.stack.layer.send_request(bye, leg.dest, self.now())
        txn.user = None
        self.engine.stack.flush()

    def on_ack(self, leg: Leg, ack: Request) -> None:
        if leg is self.a and self.a_ack_pending is not None and self.attempt is not None:
            pending, self.a_ack_pending = self.a_ack_pending, None
            assert isinstance(self.attempt.txn, ClientInviteTransaction)
            del pending
            self._send_ack(self.attempt.leg, self.attempt.txn, self.attempt.invite.cseq[0],
                           ack.body, ack.headers.get("Content-Type"))

    def on_cancel(self, leg: Leg) -> None:
        if leg is not self.a or self.state in ("connected", "ended"):
            return
        self.log.info("caller cancelled")
        self._respond_a(487)
        if self.attempt is not None:
            self._cancel_attempt(self.attempt)
            self.attempt = None
        self._end("cancelled", "caller", 487)

    def on_request(self, leg: Leg, txn: ServerTransaction, req: Request) -> None:
        other = self.b if leg is self.a else self.a
        method = req.method
        try:
            leg.dialog.receive_request(req)
        except DialogError as exc:
            self._respond_other(txn, req, leg, exc.status)
            return
        if method == "BYE":
            self._respond_other(txn, req, leg, 200)
            if self.state != "ended":
                if other is not None and self.state == "connected":
                    self._send_bye(other)
                elif other is not None and self.attempt is not None:
                    self._cancel_attempt(self.attempt)
                answered = self.state == "connected"
                self._end("answered" if answered else "cancelled",
                          "caller" if leg is self.a else "callee",
                          self.info.sip_code or 487)
            return
        if self.state != "connected" or other is None or other.dest is None:
            self._respond_other(txn, req, leg, 491 if method == "INVITE" else 481)
            return
        # re-INVITE, UPDATE, INFO and friends: relayed to the other leg
        fwd = other.request(method, req.body, req.headers.get("Content-Type"))
        out = self.engine.stack.layer.send_request(fwd, other.dest, self.now())
        out.user = other
        self.relays[id(out)] = (txn, req)
        self.engine.stack.flush()

    def _relay_response(self, leg: Leg, txn: ClientTransaction, resp: Response,
                        origin_txn: ServerTransaction, origin_req: Request) -> None:
        origin_leg = self.a if leg is not self.a else self.b
        assert origin_leg is not None
        if resp.status >= 200:
            self.relays.pop(id(txn), None)
        if isinstance(txn, ClientInviteTransaction) and 200 <= resp.status < 300:
            self._send_ack(leg, txn, txn.request.cseq[0])
        leg.dialog.receive_response(resp)  # a re-INVITE's or UPDATE's 2xx refreshes the target
        if resp.status == 100:
            return
        self._respond_other(origin_txn, origin_req, origin_leg, resp.status, resp.reason,
                            resp.body, resp.headers.get("Content-Type"))

    def _respond_other(self, txn: ServerTransaction, req: Request, leg: Leg, status: int,
                       reason: str | None = None, body: bytes = b"",
                       content_type: str | None = None) -> None:
        resp = response_for(req, status, reason)
        if 100 < status < 300 and req.method in ("INVITE", "UPDATE"):
            resp.headers.add("Contact", self.contact(leg))
        if body:
            resp.headers.add("Content-Type", content_type or "application/sdp")
            resp.body = body
        self.engine.stack.layer.respond(txn, resp, self.now())
        self.engine.stack.flush()

    def on_timeout(self, leg: Leg, txn: object, timer: str) -> None:
        attempt = self.attempt
        if attempt is not None and txn is attempt.txn:
            if attempt.timer:
                attempt.timer.cancel()
                attempt.timer = None
            self.attempt = None
            self.last_code, self.last_reason = 408, "Request Timeout"
            self.last_by = "system"
            self.log.info("target timed out", target=attempt.target.uri)
            if self.state != "ended":
                self._next_target()
            return
        if timer == "L" and leg is self.a and self.state == "connected":
            # no ACK for our 2xx (§13.3.1.4): the caller's side is gone
            self.log.warning("no ack from caller, ending call")
            if self.b is not None:
                self._send_bye(self.b)
            self._send_bye(self.a)
            self._end("answered", "system", self.info.sip_code or 200)
            return
        relay = self.relays.pop(id(txn), None)
        if relay is not None:
            origin_txn, origin_req = relay
            origin_leg = self.a if leg is not self.a else self.b
            if origin_leg is not None:
                self._respond_other(origin_txn, origin_req, origin_leg, 408)

    def _max_duration(self) -> None:
        self.end_timer = None
        if self.state != "connected":
            return
        self.log.info("max call duration reached")
        if self.b is not None:
            self._send_bye(self.b)
        self._send_bye(self.a)
        self._end("answered", "system", self.info.sip_code or 200)

    def terminate(self, reason: str = "shutdown") -> None:
        """End the call from our side (shutdown grace over): BYE or 503 to the caller."""
        if self.state == "ended":
            return
        if self.state == "connected":
            if self.b is not None:
                self._send_bye(self.b)
            self._send_bye(self.a)
            self._end("answered", "system", self.info.sip_code or 200)
        else:
            if self.attempt is not None:
                self._cancel_attempt(self.attempt)
                self.attempt = None
            self._respond_a(503, extra={"Retry-After": "5"})
            self._end("failed", "system", 503)

    # -- the end -----------------------------------------------------------------------

    def _end(self, outcome: Outcome, hangup_by: HangupBy, code: int) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        if self.end_timer:
            self.end_timer.cancel()
            self.end_timer = None
        if self.attempt and self.attempt.timer:
            self.attempt.timer.cancel()
            self.attempt.timer = None
        info = self.info
        info.ended_at = datetime.now(UTC)
        info.outcome = outcome
        info.hangup_by = hangup_by
        if info.sip_code is None:
            info.sip_code = code
        self.engine.call_finished(self)
        self.log.info(
            "call ended", outcome=outcome, sip_code=info.sip_code, hangup_by=hangup_by,
            ring_seconds=info.ring_seconds, talk_seconds=info.talk_seconds, target=info.target,
        )
        self.engine.hooks.call_ended(info)


def _outcome_for(code: int) -> Outcome:
    if code in (486, 600, 603):
        return "busy"
    if code in (408, 480, 487):
        return "no_answer"
    return "failed"


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def literal_address(uri: SipURI) -> Address | None:
    """The address of a URI whose host is an IP literal; None when it needs DNS."""
    host = uri.host_bare
    if not _is_ip_literal(host):
        return None
    default = 5061 if uri.transport == "tls" else 5060
    return Address(uri.transport, host, uri.port or default)


async def resolve(uri: SipURI) -> Address:
    """A and AAAA lookup of the target host (RFC 3263 SRV/NAPTR are not consulted)."""
    loop = asyncio.get_running_loop()
    default = 5061 if uri.transport == "tls" else 5060
    infos = await asyncio.wait_for(
        loop.getaddrinfo(uri.host_bare, uri.port or default, type=0), 5.0)
    host = str(infos[0][4][0])
    return Address(uri.transport, host, uri.port or default)
