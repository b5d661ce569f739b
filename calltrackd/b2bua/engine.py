"""The B2BUA engine: the I/O around the calls. A new INVITE goes to `routing.route`
(carrier ACL, drain, shedding, Max-Forwards, Require, DID → tracker): a `Reject` is
answered here, a `Route` becomes a `Call`. In-dialog requests, responses and timeouts go
to the call that owns them, as events; the engine executes the commands the call
returns (send through the transaction layer, timers on the loop, DNS by getaddrinfo,
hooks, log lines). The stack flushes once per SIP input; the engine once per timer or
DNS answer. The engine is the calls' `CallHost` (our address toward a peer, the ids).

The engine is built in layers, each a base class of the next: executor.py (`Executor`:
events into calls, the commands they return carried out, timers, DNS, ended calls),
media_tasks.py (`MediaTasks`: rtpengine's offers, answers and deletes as tasks, the
media timeout), routing_wait.py (`RoutingWaits`: a new call routed at once or after
its attribution or routing webhook is asked), and this module (`Engine`: SIP events to
calls, who may speak in a dialog, answers without a call, new calls and rejects).

Dialogs belong to their peers. A request in a dialog (BYE, re-INVITE, UPDATE, INFO, ACK,
PRACK) reaches the call only when its Call-ID, To tag (ours) and From tag (the peer's)
all match the leg's dialog, and it comes over the leg's transport from the leg's peer
(`Leg.admits`), or, on the caller's leg, from any address of the carrier entry the call
came in by (carriers send from several SBCs). A CANCEL must come from where its INVITE
came from, with the INVITE's Call-ID and From tag, besides matching its Via. Anything
else is answered 481, as for a dialog that does not exist, leaves the call alone, is
counted in `dialog_rejects` (calltrackd_dialog_rejected_total) and logged once per
source address and minute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from .. import ids
from ..sip.endpoint import (
    AckReceived,
    Address,
    Event,
    ForeignAck,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionTimeout,
    new_branch,
    new_tag,
)
from ..sip.message import Request, Response, response_for
from ..sip.uri import SipSyntaxError
from .call import Call
from .commands import AckIn, CancelIn, RequestIn, ResponseIn, TimeoutIn
from .executor import CallHooks
from .guard import LogLimiter, canonical_host
from .health import ProbeTicket
from .legs import ALLOW, Leg
from .routing import (
    DRAIN_RETRY_AFTER,
    SHED_REASONS,
    Load,
    Reject,
    refused_require,
    route,
)
from .routing_wait import RoutingWaits

log = structlog.get_logger("calltrackd.b2bua")

__all__ = ["ALLOW", "SHED_REASONS", "CallHooks", "Engine"]

# standard methods a B2BUA in front of PBXes does not serve (RFC 3261, 3265, 3428, 3515, 3903)
OTHER_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})
# in-dialog methods counted by name in calltrackd_dialog_rejected_total; others as "other"
_COUNTED_METHODS = frozenset({"BYE", "INVITE", "UPDATE", "INFO", "ACK", "PRACK", "CANCEL",
                              "OPTIONS"})


class Engine(RoutingWaits):
    """The B2BUA engine (see the module's docstring), made as the executor is:
    `Engine(stack, settings, hooks, wall=time.time)`."""

    def _init_layer(self) -> None:
        """The drain, shedding and refusals; the stack's events come here."""
        super()._init_layer()
        self.draining = False
        self.rejected_overload = 0  # shed for load or max_calls (calltrackd_overload_rejected)
        self.overloaded: Callable[[], bool] = lambda: False
        # refused requests in dialogs, by (reason, method); shed INVITEs by (reason,
        # tracker id or ""): plain dicts, exported by a collector at scrape time
        self.dialog_rejects: dict[tuple[str, str], int] = {}
        self.shed: dict[tuple[str, str], int] = {}
        self._reject_log = LogLimiter(60.0, burst=1)  # per source address
        self._shed_log = LogLimiter(10.0, burst=10)  # per reason
        self._log_flush: asyncio.TimerHandle | None = None
        self.stack.on_events = self.handle

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    def shed_counts(self) -> dict[str, Any]:
        """INVITEs shed since start (answered 503 before a call existed): the total, per
        reason (overload, max_calls, draining) and per tracker (the DID's, when the
        INVITE named a known one). For reports such as /v1/stats."""
        reasons = dict.fromkeys(SHED_REASONS, 0)
        trackers: dict[str, int] = {}
        for (reason, tracker), n in self.shed.items():
            reasons[reason] = reasons.get(reason, 0) + n
            if tracker:
                trackers[tracker] = trackers.get(tracker, 0) + n
        return {"total": sum(reasons.values()), "reasons": reasons, "trackers": trackers}

    # -- the calls' host ---------------------------------------------------------------

    def local_hostport(self, transport: str, toward: str) -> tuple[str, int]:
        return self.stack.local_hostport(transport, toward)

    def new_id(self, kind: str) -> str:
        if kind == "branch":
            return new_branch()
        if kind == "tag":
            return new_tag()
        if kind == "call-id":
            return ids.token_urlsafe(16) + "@calltrackd"
        return "c_" + ids.token_urlsafe(12)

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except Exception:  # one bad call must never take the engine down
                log.exception("b2bua.event_failed", sip_event=type(event).__name__)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            owner = event.transaction.user
            if isinstance(owner, Leg) and (call := self._call_of(owner)) is not None:
                self.feed(call, ResponseIn(owner, event.transaction, event.response))
            elif isinstance(owner, ProbeTicket):
                owner.prober.on_event(owner, event)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            found = self._find_dialog(event.request)
            if found:
                call, leg = found
                # an ACK gets no answer: a refused one is only counted and logged, and our
                # 2xx goes on until the peer's own ACK (the layer stops it for an ACK from
                # the INVITE's source; here, for one from another of the carrier's hosts)
                if self._in_dialog_refusal(call, leg, event.request, event.source) is None:
                    if event.transaction is not None:
                        self.stack.layer.ack_received(event.transaction)
                    self.feed(call, AckIn(leg, event.request))
        elif isinstance(event, ForeignAck):
            # the ACK for our non-2xx from elsewhere than the INVITE: the layer dropped it
            self._refuse("source", event.request, event.source)
        elif isinstance(event, TransactionTimeout):
            owner = event.transaction.user
            if isinstance(owner, Leg) and (call := self._call_of(owner)) is not None:
                self.feed(call, TimeoutIn(owner, event.transaction, event.timer))
            elif isinstance(owner, ProbeTicket):
                owner.prober.on_event(owner, event)
        elif isinstance(event, MalformedMessage):
            log.info("b2bua.malformed", source=str(event.source), reason=event.reason,
                     answered=event.answered)

    def _find_dialog(self, request: Request) -> tuple[Call, Leg] | None:
        try:
            tag = request.to.tag
        except SipSyntaxError:
            return None
        if not tag:
            return None
        return self.dialogs.get((request.call_id, tag))

    def _on_request(self, event: RequestReceived) -> None:
        req = event.request
        txn = event.transaction
        method = req.method
        if method == "CANCEL":
            owner = event.cancels.user if event.cancels is not None else None
            call = self._call_of(owner) if isinstance(owner, Leg) else None
            if isinstance(owner, Leg) and call is not None:
                refused = self._cancel_refusal(call, req, event.source)
                if refused is None:
                    self._respond(txn, req, 200)
                    self.feed(call, CancelIn(owner))
                    return
                self._refuse(refused, req, event.source)
                self._respond_stateless(txn, req, 481)
                return
            self._respond(txn, req, 481)
            return
        try:
            to_tag = req.to.tag
        except SipSyntaxError:
            self._respond(txn, req, 400)
            return
        if to_tag:
            found = self.dialogs.get((req.call_id, to_tag))
            if found is None:
                self._respond(txn, req, 481)
                return
            call, leg = found
            refused = self._in_dialog_refusal(call, leg, req, event.source)
            if refused is not None:
                self._respond_stateless(txn, req, 481)  # as for no dialog: nothing to learn
                return
            self.feed(call, RequestIn(leg, txn, req))
            return
        if not req.uri.lower().startswith(("sip:", "sips:", "tel:")):
            self._respond(txn, req, 416)  # §8.2.2.1: a Request-URI scheme we do not serve
            return
        if method == "INVITE":
            self._on_invite(event)  # Require is checked after the carrier ACL
            return
        unsupported = refused_require(req)
        if unsupported is not None:
            self._respond(txn, req, unsupported.status, unsupported.headers)
        elif method == "OPTIONS":
            if self.draining:  # a dispatcher probing us takes this node out of its set
                self._respond(txn, req, 503, DRAIN_RETRY_AFTER)
                return
            self._respond(txn, req, 200, (("Allow", ALLOW), ("Accept", "application/sdp")))
        elif method in ("BYE", "UPDATE", "INFO", "PRACK"):
            self._respond(txn, req, 481)
        else:
            # §8.2.1: a method we know but do not serve is 405, one we do not know 501
            self._respond(txn, req, 405 if method in OTHER_METHODS else 501,
                          (("Allow", ALLOW),))

    # -- who may speak in a dialog -----------------------------------------------------

    def _in_dialog_refusal(self, call: Call, leg: Leg, req: Request,
                           source: Address) -> str | None:
        """Why a request in `leg`'s dialog is refused (counted and logged), or None."""
        reason = None
        if not leg.dialog.matches(req):
            reason = "tags"  # the From tag is not the peer's
        elif not (leg.admits(source) or (leg is call.a and self._carrier_admits(call, source))):
            reason = "source"
        if reason is not None:
            self._refuse(reason, req, source)
        return reason

    def _cancel_refusal(self, call: Call, req: Request, source: Address) -> str | None:
        """§9.2: a CANCEL matches its INVITE's transaction; it must also come from where
        the INVITE came from (the hop that sent it) and carry its Call-ID and From tag."""
        invite = call.invite
        try:
            same_ids = req.call_id == invite.call_id and req.from_.tag == invite.from_.tag
        except SipSyntaxError:
            same_ids = False
        if not same_ids:
            return "tags"
        if (source.transport != call.source.transport
                or canonical_host(source.host) != canonical_host(call.source.host)):
            return "source"
        return None

    def _carrier_admits(self, call: Call, source: Address) -> bool:
        carrier = self.settings().carrier_for(source.host)
        return carrier is not None and call.info is not None \
            and carrier.name == call.info.carrier

    def _refuse(self, reason: str, req: Request, source: Address) -> None:
        method = req.method if req.method in _COUNTED_METHODS else "other"
        key = (reason, method)
        self.dialog_rejects[key] = self.dialog_rejects.get(key, 0) + 1
        left_out = self._reject_log.allow(source.host, self.stack.clock())
        if left_out is not None:
            log.warning("b2bua.dialog_refused", source=source.host, port=source.port,
                        transport=source.transport, method=req.method, reason=reason,
                        call_id=req.call_id, suppressed=left_out)
        self._arm_log_flush()

    # -- rate-limited log lines --------------------------------------------------------

    def _arm_log_flush(self) -> None:
        if self._log_flush is None and (self._reject_log.pending or self._shed_log.pending):
            self._log_flush = self.stack.loop.call_later(1.0, self._flush_logs)

    def _flush_logs(self) -> None:
        """A flood that stopped is still told: the lines it left out, once per key."""
        self._log_flush = None
        now = self.stack.clock()
        for source, n in self._reject_log.expired(now):
            log.warning("b2bua.dialog_refused_left_out", source=source, suppressed=n)
        for reason, n in self._shed_log.expired(now):
            log.warning("b2bua.invite_shed_left_out", reason=reason, suppressed=n)
        self._arm_log_flush()

    # -- answers without a call --------------------------------------------------------

    def _respond(self, txn: ServerTransaction, req: Request, status: int,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        resp = response_for(req, status)
        _add_to_tag(resp)
        for name, value in headers:
            resp.headers.add(name, value)
        self.stack.layer.respond(txn, resp, self.stack.clock())

    def _respond_stateless(self, txn: ServerTransaction, req: Request, status: int) -> None:
        """One answer per request, no transaction: nothing retransmitted to the sender and
        no transaction key taken from the peer the request pretends to be."""
        resp = response_for(req, status)
        _add_to_tag(resp)
        dest = self.stack.layer.transaction_address(txn)
        self.stack.layer.discard(txn)
        self.stack.layer.send_stateless(resp, dest)

    # -- a new call --------------------------------------------------------------------

    def _on_invite(self, event: RequestReceived) -> None:
        req, txn, source = event.request, event.transaction, event.source
        now = self.stack.clock()
        wall = self.wall()
        settings = self.settings()
        load = Load(len(self.calls), self.overloaded(), self.draining)
        decision = route(req, source, settings, load)
        if isinstance(decision, Reject):
            self._reject(decision, txn, req, source, now)
            return
        call = Call(self, req, txn, source, now, wall, user_agent=settings.sip.user_agent,
                    max_duration=settings.sip.max_call_duration, route=decision)
        txn.user = call.a
        call = Call(self, req, txn, source, now, wall, user_agent=settings.sip.user_agent,
                    max_duration=settings.sip.max_call_duration, route=decision)
        txn.user = call.a
        self.calls[call.id] = call
        self._route_call(call, decision, settings, txn, req, now, wall)

    def _reject(self, r: Reject, txn: ServerTransaction, req: Request, source: Address,
                now: float) -> None:
        if r.reason == "unknown_source":
            log.info("b2bua.unknown_source", source=source.host, call_id=req.call_id)
        elif r.reason == "unknown_carrier":
            log.warning("b2bua.unknown_carrier", source=source.host, carrier=r.detail,
                        call_id=req.call_id)
        elif r.reason == "unknown_did":
            log.info("b2bua.unknown_did", did=r.did, call_id=req.call_id, carrier=r.carrier)
        elif r.shed:
            # shed, don't queue: counted per reason and tracker, logged (at most 10 lines
            # per reason in 10 s, then the count of lines left out)
            if r.reason != "draining":
                self.rejected_overload += 1
            key = (r.reason, r.tracker or "")
            self.shed[key] = self.shed.get(key, 0) + 1
            left_out = self._shed_log.allow(r.reason, now)
            if left_out is not None:
                log.warning("b2bua.invite_shed", reason=r.reason, call_id=req.call_id,
                            source=source.host, carrier=r.carrier, did=r.did,
                            tracker=r.tracker, suppressed=left_out)
            self._arm_log_flush()
        self._respond(txn, req, r.status, r.headers)


def _add_to_tag(resp: Response) -> None:
    to = resp.headers.get("To") or ""
    if ";tag=" not in to.replace(" ", "").lower():
        resp.headers.set("To", f"{to};tag={new_tag()}")
