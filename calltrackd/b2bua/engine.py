"""The B2BUA engine: new INVITE → carrier ACL → DID → tracker → a Call; in-dialog
requests, responses and timeouts to the call that owns them.

Routing needs only configuration: a call is never held up by tracking.

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
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..sip.endpoint import (
    AckReceived,
    Address,
    Event,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionTimeout,
)
from ..sip.message import Request, response_for
from ..sip.uri import NameAddr, SipSyntaxError, SipURI
from ..tracking.numbers import normalize
from .call import Call, CallInfo, Leg
from .guard import LogLimiter, canonical_host

if TYPE_CHECKING:
    from ..config import Carrier, Settings
    from ..transport.stack import SipStack

log = structlog.get_logger("calltrackd.b2bua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# standard methods a B2BUA in front of PBXes does not serve (RFC 3261, 3265, 3428, 3515, 3903)
OTHER_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})
DRAIN_RETRY_AFTER = {"Retry-After": "5"}  # seconds; another node takes the call meanwhile
# the carrier a trusted proxy (Kamailio with its ACL) says an INVITE came from
CARRIER_HEADER = "X-Calltrackd-Carrier"
# in-dialog methods counted by name in calltrackd_dialog_rejected_total; others as "other"
_COUNTED_METHODS = frozenset({"BYE", "INVITE", "UPDATE", "INFO", "ACK", "PRACK", "CANCEL",
                              "OPTIONS"})
SHED_REASONS = ("overload", "max_calls", "draining")


class CallHooks(Protocol):
    """What the rest of calltrackd learns about calls (tracking, CDRs, metrics, logs)."""

    def call_started(self, call: CallInfo) -> None: ...
    def call_forwarded(self, call: CallInfo, seconds: float) -> None: ...
    def call_answered(self, call: CallInfo) -> None: ...
    def call_ended(self, call: CallInfo) -> None: ...


class Engine:
    def __init__(
        self,
        stack: SipStack,
        settings: Callable[[], Settings],
        hooks: CallHooks,
    ) -> None:
        self.stack = stack
        self.settings = settings
        self.hooks = hooks
        self.calls: dict[str, Call] = {}  # call id (c_...) → call
        self.dialogs: dict[tuple[str, str], tuple[Call, Leg]] = {}  # (Call-ID, our tag)
        self.draining = False
        self.rejected_overload = 0  # shed for load or max_calls (calltrackd_overload_rejected)
        self.overloaded: Callable[[], bool] = lambda: False
        # called once a call has left `calls` (the drain waits on it instead of polling)
        self.on_call_finished: Callable[[], None] = lambda: None
        # refused requests in dialogs, by (reason, method); shed INVITEs by (reason,
        # tracker id or ""): plain dicts, exported by a collector at scrape time
        self.dialog_rejects: dict[tuple[str, str], int] = {}
        self.shed: dict[tuple[str, str], int] = {}
        self._reject_log = LogLimiter(60.0, burst=1)  # per source address
        self._shed_log = LogLimiter(10.0, burst=10)  # per reason
        self._log_flush: asyncio.TimerHandle | None = None
        # ended calls stay alive while their transactions may still report (a 2xx that
        # crossed our CANCEL must be ACKed and hung up): legs hold their call weakly
        self._linger: deque[tuple[float, Call]] = deque()
        self._linger_timer: asyncio.TimerHandle | None = None
        stack.on_events = self.handle

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

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, events: list[Event]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except Exception:  # one bad call must never take the engine down
                log.exception("event handling failed", event=type(event).__name__)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            owner = event.transaction.user
            if isinstance(owner, Leg) and (call := owner.call) is not None:
                call.on_response(owner, event.transaction, event.response)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            found = self._find_dialog(event.request)
            if found:
                call, leg = found
                # an ACK gets no answer: a refused one is only counted and logged
                if self._in_dialog_refusal(call, leg, event.request, event.source) is None:
                    call.on_ack(leg, event.request)
        elif isinstance(event, TransactionTimeout):
            owner = event.transaction.user
            if isinstance(owner, Leg) and (call := owner.call) is not None:
                call.on_timeout(owner, event.transaction, event.timer)
        elif isinstance(event, MalformedMessage):
            log.info("malformed sip message", source=str(event.source), reason=event.reason,
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
            call = owner.call if isinstance(owner, Leg) else None
            if isinstance(owner, Leg) and call is not None:
                refused = self._cancel_refusal(call, req, event.source)
                if refused is None:
                    self._respond(txn, req, 200)
                    call.on_cancel(owner)
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
            call.on_request(leg, txn, req)
            return
        if not req.uri.lower().startswith(("sip:", "sips:", "tel:")):
            self._respond(txn, req, 416)  # §8.2.2.1: a Request-URI scheme we do not serve
            return
        # an INVITE is checked after the carrier ACL
        if method != "INVITE" and self._refused_require(txn, req):
            return
        if method == "INVITE":
            self._on_invite(event)
        elif method == "OPTIONS":
            if self.draining:  # a dispatcher probing us takes this node out of its set
                self._respond(txn, req, 503, DRAIN_RETRY_AFTER)
                return
            resp = response_for(req, 200)
            resp.headers.add("Allow", ALLOW)
            resp.headers.add("Accept", "application/sdp")
            self._add_to_tag(resp)
            self.stack.layer.respond(txn, resp, self.stack.clock())
        elif method in ("BYE", "UPDATE", "INFO", "PRACK"):
            self._respond(txn, req, 481)
        else:
            # §8.2.1: a method we know but do not serve is 405, one we do not know 501
            resp = response_for(req, 405 if method in OTHER_METHODS else 501)
            resp.headers.add("Allow", ALLOW)
            self._add_to_tag(resp)
            self.stack.layer.respond(txn, resp, self.stack.clock())

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
        return carrier is not None and carrier.name == call.info.carrier

    def _refuse(self, reason: str, req: Request, source: Address) -> None:
        method = req.method if req.method in _COUNTED_METHODS else "other"
        key = (reason, method)
        self.dialog_rejects[key] = self.dialog_rejects.get(key, 0) + 1
        left_out = self._reject_log.allow(source.host, self.stack.clock())
        if left_out is not None:
            log.warning("in-dialog request refused", source=source.host, port=source.port,
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
            log.warning("in-dialog requests refused, lines left out", source=source,
                        suppressed=n)
        for reason, n in self._shed_log.expired(now):
            log.warning("invites shed, lines left out", reason=reason, suppressed=n)
        self._arm_log_flush()

    def _shed(self, reason: str, txn: ServerTransaction, req: Request, source: Address,
              carrier: Carrier, settings: Settings, extra: dict[str, str]) -> None:
        """Answer 503 before any call exists: counted per reason and tracker, logged
        (at most 10 lines per reason in 10 s, then the count of lines left out)."""
        tracker = ""
        try:
            did = self._dialled(req, carrier)
        except SipSyntaxError:
            did = None
        found = settings.tracker_by_did(did) if did else None
        if found is not None:
            tracker = found.id
        key = (reason, tracker)
        self.shed[key] = self.shed.get(key, 0) + 1
        left_out = self._shed_log.allow(reason, self.stack.clock())
        if left_out is not None:
            log.warning("invite shed", reason=reason, call_id=req.call_id,
                        source=source.host, carrier=carrier.name, did=did,
                        tracker=tracker or None, suppressed=left_out)
        self._arm_log_flush()
        self._respond(txn, req, 503, extra)

    @staticmethod
    def _dialled(req: Request, carrier: Carrier) -> str | None:
        """The DID in E.164 where the carrier puts it (Request-URI or To); raises
        SipSyntaxError for a URI that does not parse."""
        user = SipURI.parse(req.uri).user if carrier.did_from == "ruri" else req.to.uri.user
        return normalize((user or "").split(";")[0], carrier.default_country)

    def _refused_require(self, txn: ServerTransaction, req: Request) -> bool:
        """§8.2.2.3: we support no extension a request may require; 420 if it names one."""
        require = [v.lower() for v in req.headers.values("Require")]
        if require:
            self._respond(txn, req, 420, {"Unsupported": ", ".join(require)})
        return bool(require)

    def _respond(
        self, txn: ServerTransaction, req: Request, status: int, extra: dict[str, str] | None = None
    ) -> None:
        resp = response_for(req, status)
        self._add_to_tag(resp)
        for name, value in (extra or {}).items():
            resp.headers.add(name, value)
        self.stack.layer.respond(txn, resp, self.stack.clock())

    def _respond_stateless(self, txn: ServerTransaction, req: Request, status: int) -> None:
        """One answer per request, no transaction: nothing retransmitted to the sender and
        no transaction key taken from the peer the request pretends to be."""
        resp = response_for(req, status)
        self._add_to_tag(resp)
        dest = self.stack.layer.transaction_address(txn)
        self.stack.layer.discard(txn)
        self.stack.layer.send_stateless(resp, dest)

    @staticmethod
    def _add_to_tag(resp: object) -> None:
        from ..sip.endpoint import new_tag
        from ..sip.message import Response

        assert isinstance(resp, Response)
        to = resp.headers.get("To") or ""
        if ";tag=" not in to.replace(" ", "").lower():
            resp.headers.set("To", f"{to};tag={new_tag()}")

    # -- a new call --------------------------------------------------------------------

    def _on_invite(self, event: RequestReceived) -> None:
        req, txn, source = event.request, event.transaction, event.source
        started = time.time()
        settings = self.settings()
        carrier = self._carrier_of(req, source, settings)
        if carrier is None:
            self._respond(txn, req, 403)
            return
        if self.draining:
            self._shed("draining", txn, req, source, carrier, settings, DRAIN_RETRY_AFTER)
            return
        max_calls = settings.sip.max_calls
        full = bool(max_calls and len(self.calls) >= max_calls)
        if full or self.overloaded():
            # shed, don't queue: a late answer costs the calls already accepted
            self.rejected_overload += 1
            self._shed("max_calls" if full else "overload", txn, req, source, carrier,
                       settings, {"Retry-After": "1"})
            return
        mf = req.headers.get("Max-Forwards")
        if mf is not None:
            if not mf.strip().isdigit():
                self._respond(txn, req, 400)
                return
            if int(mf) <= 0:
                self._respond(txn, req, 483)
                return
        if self._refused_require(txn, req):
            return
        try:
            ruri = SipURI.parse(req.uri)
            to = req.to
            from_ = req.from_
        except SipSyntaxError:
            self._respond(txn, req, 400)
            return
        raw = (ruri.user if carrier.did_from == "ruri" else to.uri.user) or ""
        did = self._dialled(req, carrier)
        tracker = settings.tracker_by_did(did) if did else None
        if tracker is None or did is None:
            log.info("invite to unknown did", did=raw, call_id=req.call_id, carrier=carrier.name)
            self._respond(txn, req, 404)
            return
        caller = _caller_number(from_, carrier.default_country)
        call = Call(
            engine=self,
            tracker=tracker,
            did=did,
            caller=caller,
            carrier=carrier.name,
            invite=req,
            transaction=txn,
            source=source,
            started=started,
        )
        self.calls[call.id] = call
        call.start()

    def _carrier_of(self, req: Request, source: Address, settings: Settings) -> Carrier | None:
        """The carrier entry an INVITE came in by: the one named in X-Calltrackd-Carrier
        when a trusted proxy (`sip.trusted_proxies`) sent it, else the one whose
        addresses hold the source. The header from anyone else is ignored; a trusted
        proxy naming no configured carrier is refused (it is configured wrong)."""
        if settings.is_trusted_proxy(source.host):
            named = req.headers.get(CARRIER_HEADER)
            if named is not None:
                carrier = settings.carrier_by_name(named.strip())
                if carrier is None:
                    log.warning("trusted proxy names an unknown carrier", source=source.host,
                                carrier=named.strip()[:64], call_id=req.call_id)
                return carrier
        carrier = settings.carrier_for(source.host)
        if carrier is None:
            log.info("invite from unknown address", source=source.host, call_id=req.call_id)
        return carrier

    # -- bookkeeping for calls ---------------------------------------------------------

    def register_dialog(self, call_id: str, tag: str, call: Call, leg: Leg) -> None:
        self.dialogs[(call_id, tag)] = (call, leg)

    def call_finished(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for key in call.dialog_keys():
            self.dialogs.pop(key, None)
        self.on_call_finished()
        # 64*T1 is the longest a transaction of the call may still report (Timer B/F)
        sip = self.settings().sip
        self._linger.append((self.stack.clock() + 64 * sip.t1 + 1.0, call))
        if self._linger_timer is None:
            self._linger_timer = self.stack.loop.call_later(64 * sip.t1 + 1.0, self._prune)

    def _prune(self) -> None:
        self._linger_timer = None
        now = self.stack.clock()
        linger = self._linger
        while linger and linger[0][0] <= now:
            linger.popleft()
        if linger:
            self._linger_timer = self.stack.loop.call_later(
                max(0.05, linger[0][0] - now), self._prune)

    @property
    def lingering_calls(self) -> int:
        """Ended calls kept for their transactions' last answers."""
        return len(self._linger)


def _caller_number(from_: NameAddr, default_country: str | None) -> str:
    """The caller's number in E.164 when it looks like a number, else From's user as is."""
    user = (from_.uri.user or "").split(";")[0]
    return normalize(user, default_country) or user or "anonymous"
