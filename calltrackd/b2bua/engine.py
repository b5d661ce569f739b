"""The B2BUA engine: new INVITE → carrier ACL → DID → tracker → a Call; in-dialog
requests, responses and timeouts to the call that owns them.

Routing needs only configuration: a call is never held up by tracking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from ..sip.endpoint import (
    AckReceived,
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

if TYPE_CHECKING:
    from ..config import Settings
    from ..transport.stack import SipStack

log = structlog.get_logger("calltrackd.b2bua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# standard methods a B2BUA in front of PBXes does not serve (RFC 3261, 3265, 3428, 3515, 3903)
OTHER_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})
DRAIN_RETRY_AFTER = {"Retry-After": "5"}  # seconds; another node takes the call meanwhile


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
        self.rejected_overload = 0
        self.overloaded: Callable[[], bool] = lambda: False
        stack.on_events = self.handle

    @property
    def active_calls(self) -> int:
        return len(self.calls)

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
            if isinstance(owner, Leg):
                owner.call.on_response(owner, event.transaction, event.response)
        elif isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, AckReceived):
            found = self._find_dialog(event.request)
            if found:
                call, leg = found
                call.on_ack(leg, event.request)
        elif isinstance(event, TransactionTimeout):
            owner = event.transaction.user
            if isinstance(owner, Leg):
                owner.call.on_timeout(owner, event.transaction, event.timer)
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
            if isinstance(owner, Leg):
                self._respond(txn, req, 200)
                owner.call.on_cancel(owner)
            else:
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
        carrier = settings.carrier_for(source.host)
        if carrier is None:
            log.info("invite from unknown address", source=source.host, call_id=req.call_id)
            self._respond(txn, req, 403)
            return
        if self.draining:
            self._respond(txn, req, 503, DRAIN_RETRY_AFTER)
            return
        max_calls = settings.sip.max_calls
        if (max_calls and len(self.calls) >= max_calls) or self.overloaded():
            # shed, don't queue: a late answer costs the calls already accepted
            self.rejected_overload += 1
            self._respond(txn, req, 503, {"Retry-After": "1"})
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
        did = normalize(raw.split(";")[0], carrier.default_country)
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

    # -- bookkeeping for calls ---------------------------------------------------------

    def register_dialog(self, call_id: str, tag: str, call: Call, leg: Leg) -> None:
        self.dialogs[(call_id, tag)] = (call, leg)

    def call_finished(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for key in call.dialog_keys():
            self.dialogs.pop(key, None)


def _caller_number(from_: NameAddr, default_country: str | None) -> str:
    """The caller's number in E.164 when it looks like a number, else From's user as is."""
    user = (from_.uri.user or "").split(";")[0]
    return normalize(user, default_country) or user or "anonymous"
