"""The B2BUA engine: the I/O around the calls. A new INVITE goes to `routing.route`
(carrier ACL, drain, shedding, Max-Forwards, Require, DID → tracker): a `Reject` is
answered here, a `Route` becomes a `Call`. In-dialog requests, responses and timeouts go
to the call that owns them, as events; the engine executes the commands the call
returns (send through the transaction layer, timers on the loop, DNS by getaddrinfo,
hooks, log lines). The stack flushes once per SIP input; the engine once per timer or
DNS answer. The engine is the calls' `CallHost` (our address toward a peer, the ids).

Routing needs only configuration, unless the tracker's routing rules ask what only the
attribution knows (`TrackerRules.needs_attribution`: the visitor's channel, source,
campaign, landing page, first-time caller). Then the call waits in ROUTING for
`attribute` at most `ATTRIBUTION_WAIT` seconds; late, failing or absent, the rules see
no attribution (tracking never costs a call, only the rules that ask about it).
A tracker with a routing webhook (routing_webhook.py) answers 100 Trying at once, then
asks its webhook (with the attribution, waited for as above) at most the webhook's
`timeout`; no usable answer in time, the rules route the call.

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
import datetime as dt
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from .. import ids
from ..aio import bounded
from ..sip.endpoint import (
    AckReceived,
    Address,
    Event,
    MalformedMessage,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionTimeout,
    new_branch,
    new_tag,
)
from ..sip.message import Request, Response, response_for
from ..sip.transaction import TransactionError
from ..sip.uri import SipSyntaxError, SipURI
from .call import Call, CallStateError, State
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
from .guard import LogLimiter, canonical_host
from .health import ProbeTicket, TargetProber
from .legs import ALLOW, Leg, default_port
from .pbx_headers import PbxHeaders
from .rotation import Rotation
from .routing import (
    DRAIN_RETRY_AFTER,
    SHED_REASONS,
    Load,
    Reject,
    Route,
    facts_of,
    refused_require,
    route,
    with_answer,
    with_rules,
)
from .routing_webhook import Answer, RoutingWebhook, RoutingWebhookClient, payload
from .rules import TrackerRules

if TYPE_CHECKING:
    from ..config import Settings
    from ..tracking.model import Attribution, Tracker
    from ..transport.stack import SipStack

log = structlog.get_logger("calltrackd.b2bua")

__all__ = ["ALLOW", "SHED_REASONS", "CallHooks", "Engine"]

# standard methods a B2BUA in front of PBXes does not serve (RFC 3261, 3265, 3428, 3515, 3903)
OTHER_METHODS = frozenset({"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH"})
# in-dialog methods counted by name in calltrackd_dialog_rejected_total; others as "other"
_COUNTED_METHODS = frozenset({"BYE", "INVITE", "UPDATE", "INFO", "ACK", "PRACK", "CANCEL",
                              "OPTIONS"})
RESOLVE_TIMEOUT = 5.0
ATTRIBUTION_WAIT = 0.25  # seconds a call waits for tracking when its rules need it
# (tracker, did, caller, Unix time) → the attribution and whether the caller is new
AttributeFn = Callable[["Tracker", str, str, float],
                       Awaitable[tuple["Attribution", bool | None]]]


class MediaControl(Protocol):
    """What the engine asks of rtpengine (media/service.py's `Media`); SDPs as text.
    Each ends within its budget and raises (NgError, OSError, ...) when it cannot: the
    call then goes direct."""

    async def offer(self, call_id: str, from_tag: str, sdp: str, *, record: bool,
                    to_tag: str | None = None) -> str: ...
    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str: ...
    async def finish(self, info: CallInfo, from_tag: str, *, record: bool) -> None: ...
    async def idle(self, call_id: str) -> float | None: ...


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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stack = stack
        self.settings = settings
        self.hooks = hooks
        self.wall = wall  # Unix time, read once per call: CDR timestamps count from it
        # a target's host and port → the address to send to (A/AAAA; raises OSError)
        self.resolver: Callable[[str, int], Awaitable[str]] = self._getaddrinfo
        self.calls: dict[str, Call] = {}  # call id (c_...) → call
        self.media: MediaControl | None = None  # rtpengine, when [media] configures one
        self.media_errors = 0  # offers/answers that failed: those calls went direct
        self._media_tasks: set[asyncio.Task[None]] = set()
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
        # the calls' timers: call id → timer name → handle (the handle names the call by
        # its id, so a call holds no handle and no handle keeps an ended call)
        self._timers: dict[str, dict[str, asyncio.TimerHandle]] = {}
        # ended calls stay while their transactions may still report (a 2xx that crossed
        # our CANCEL must be ACKed and hung up): legs name their call by id
        self._ended: dict[str, Call] = {}
        self._linger: deque[tuple[float, str]] = deque()
        self._linger_timer: asyncio.TimerHandle | None = None
        self.health: TargetProber | None = None  # target health: down targets skipped
        # who the call belongs to, asked before routing when the rules need it
        self.attribute: AttributeFn | None = None
        # calls waiting in ROUTING for their attribution or routing webhook: call id →
        # what routes them, and the wait's timer or the webhook's task (cancelled when
        # the call ends first: a CANCEL or shutdown in ROUTING)
        self._routing: dict[str, tuple[Route, TrackerRules | None, PbxHeaders | None,
                                       asyncio.TimerHandle | asyncio.Task[None] | None]] = {}
        # POSTs to the trackers' routing webhooks (None: routing webhooks are not used)
        self.routing_client: RoutingWebhookClient | None = None
        self.rotation: Rotation | None = None  # hunt round_robin: the store's shared count
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

    # -- running a call ----------------------------------------------------------------

    def feed(self, call: Call, event: CallEvent, now: float | None = None) -> None:
        """One event into a call, and its commands executed (the caller flushes)."""
        if now is None:
            now = self.stack.clock()
        try:
            commands = call.handle(event, now)
        except CallStateError as exc:
            log.error("call.impossible_event", call=call.id, error=str(exc))
            return
        for command in commands:
            self._execute(call, command, now)

    def _execute(self, call: Call, c: Command, now: float) -> None:
        layer = self.stack.layer  # the most frequent commands first
        if isinstance(c, Respond):
            layer.respond(c.transaction, c.response, now)
        elif isinstance(c, Notify):
            self._notify(c, now)
        elif isinstance(c, SendRequest):
            txn = layer.send_request(c.request, c.dest, now)
            txn.user = c.leg if c.track else None
        elif isinstance(c, Log):
            (log.warning if c.level == "warning" else log.info)(c.event, **c.fields)
        elif isinstance(c, StartTimer):
            self._start_timer(call, c.name, c.at, now)
        elif isinstance(c, CancelTimer):
            handle = self._timers.get(call.id, {}).pop(c.name, None)
            if handle is not None:
                handle.cancel()
        elif isinstance(c, RegisterDialog):
            self.dialogs[(c.leg.dialog.call_id, c.leg.dialog.local_tag)] = (call, c.leg)
        elif isinstance(c, SendAck):
            try:
                layer.send_ack(c.transaction, c.ack)
            except TransactionError:
                pass  # the transaction holds its ACK already, or is gone
        elif isinstance(c, Finished):
            self._finished(call, now)
        elif isinstance(c, Resolve):
            self.stack.loop.create_task(self._resolve(call, c.uri))
        elif isinstance(c, (MediaOffer, MediaAnswer)):
            self._spawn(self._media(call, c))
        elif isinstance(c, MediaDelete):
            if self.media is not None and call.info is not None:
                self._spawn(self.media.finish(call.info, c.from_tag, record=c.record))

    def _notify(self, c: Notify, now: float) -> None:
        hooks = self.hooks
        if c.kind == "started":
            hooks.call_started(c.info)
        elif c.kind == "forwarded":
            # the call's set-up time in event time, plus what this input took so far:
            # the INVITE→forwarded histogram measures our own processing too
            hooks.call_forwarded(c.info, c.seconds + (self.stack.clock() - now))
        elif c.kind == "answered":
            hooks.call_answered(c.info)
        else:
            hooks.call_ended(c.info)

    def _start_timer(self, call: Call, name: str, at: float, now: float) -> None:
        timers = self._timers.setdefault(call.id, {})
        old = timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = self.stack.loop
        timers[name] = loop.call_at(loop.time() + max(0.0, at - now), self._fire, call.id,
                                    name)

    def _fire(self, call_id: str, name: str) -> None:
        timers = self._timers.get(call_id)
        if timers is not None:
            timers.pop(name, None)
        call = self.calls.get(call_id)
        if call is not None:
            self._input(call, TimerFired(name))

    def _input(self, call: Call, event: CallEvent) -> None:
        """An input of the engine's own (a timer, a DNS answer): fed, then flushed."""
        try:
            self.feed(call, event)
        except Exception:  # one bad call must never take the engine down
            log.exception("b2bua.event_failed", call_event=type(event).__name__, call=call.id)
        self.stack.flush()

    async def _resolve(self, call: Call, uri: SipURI) -> None:
        """A and AAAA lookup of the target host (RFC 3263 SRV/NAPTR are not consulted)."""
        port = default_port(uri)
        event: CallEvent
        try:
            event = Resolved(Address(uri.transport, await self.resolver(uri.host_bare, port),
                                     port))
        except OSError as exc:
            event = ResolveFailed(str(exc) or type(exc).__name__)
        self._input(call, event)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A media task, held until done (the loop keeps only weak references)."""
        task = self.stack.loop.create_task(work)
        if task is not None:  # None in the tests' fake loop, which runs it at once
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)

    async def _media(self, call: Call, c: MediaOffer | MediaAnswer) -> None:
        """An offer or answer through rtpengine within its budget; the result (or why
        there is none) goes back to the call as MediaDone."""
        media = self.media
        kind: Literal["offer", "answer"] = "offer" if isinstance(c, MediaOffer) else "answer"
        seq = c.seq
        event: MediaDone
        try:
            if media is None:
                raise OSError("no rtpengine configured")
            sdp = c.sdp.decode("utf-8", "surrogateescape")
            if isinstance(c, MediaOffer):
                work = media.offer(call.id, c.from_tag, sdp, record=c.record,
                                   to_tag=c.to_tag)
            else:
                work = media.answer(call.id, c.from_tag, c.to_tag, sdp)
            out = await work
            event = MediaDone(kind, out.encode("utf-8", "surrogateescape"), None, seq)
        except Exception as exc:  # tracking never costs a call: any failure → direct
            self.media_errors += 1
            why = str(exc) or type(exc).__name__
            log.warning("media.failed", call=call.id, command=kind, error=why[:200])
            event = MediaDone(kind, None, why[:200], seq)
        self._input(call, event)

    async def watch_media(self, stop: asyncio.Event) -> None:
        """Ends anchored calls whose RTP stopped: every third of `[media] media_timeout`
        (0: off) rtpengine is asked when each side last sent."""
        while not stop.is_set():
            timeout = self.settings().media.media_timeout
            every = max(1.0, timeout / 3) if timeout > 0 else 5.0
            try:
                await asyncio.wait_for(stop.wait(), every)
                return
            except TimeoutError:
                pass
            if timeout > 0:
                await self.check_media(timeout)

    async def check_media(self, limit: float) -> None:
        media = self.media
        if media is None:
            return
        for call in [c for c in self.calls.values()
                     if c.state is State.CONNECTED and c.offer_sdp is not None]:
            try:
                idle = await media.idle(call.id)
            except Exception as exc:  # rtpengine gone: the call goes on
                log.info("media.query_failed", call=call.id, error=str(exc)[:200])
                continue
            if idle is not None and idle >= limit and call.id in self.calls:
                self._input(call, MediaTimeout(idle))

    async def _getaddrinfo(self, host: str, port: int) -> str:
        infos = await asyncio.wait_for(self.stack.loop.getaddrinfo(host, port, type=0),
                                       RESOLVE_TIMEOUT)
        if not infos:
            raise OSError(f"no address for {host}")
        return str(infos[0][4][0])

    def terminate(self, call: Call, reason: str = "shutdown") -> None:
        """End a call from our side (shutdown grace over): BYE or 503 to the caller."""
        self._input(call, Terminate(reason))

    def terminate_all(self, reason: str = "shutdown") -> None:
        for call in list(self.calls.values()):
            self.terminate(call, reason)

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
        elif isinstance(event, TransactionTimeout):
            owner = event.transaction.user
            if isinstance(owner, Leg) and (call := self._call_of(owner)) is not None:
                self.feed(call, TimeoutIn(owner, event.transaction, event.timer))
            elif isinstance(owner, ProbeTicket):
                owner.prober.on_event(owner, event)
        elif isinstance(event, MalformedMessage):
            log.info("b2bua.malformed", source=str(event.source), reason=event.reason,
                     answered=event.answered)

    def _call_of(self, leg: Leg) -> Call | None:
        """The call of a leg: live, or ended and lingering for its transactions."""
        call_id = leg.call_id
        return self.calls.get(call_id) or self._ended.get(call_id)

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
        self.calls[call.id] = call
        rules = settings.routes.get(decision.tracker.id)
        pbx = settings.pbx.get(decision.tracker.id)
        if pbx is not None and not pbx.wanted:
            pbx = None
        hook = settings.routing_webhooks.get(decision.tracker.id)
        if hook is not None and self.routing_client is not None:
            self._respond_trying(txn, req)
            self._routing[call.id] = (decision, rules, pbx, None)
            task = self.stack.loop.create_task(self._ask_webhook(call.id, hook, wall))
            if call.id in self._routing:  # still asking: the call's end cancels the task
                self._routing[call.id] = (decision, rules, pbx, task)
            return
        if self.attribute is not None and (
                pbx is not None or (rules is not None and rules.needs_attribution)):
            self._wait_attribution(call, decision, rules, pbx, wall)
            return
        at = dt.datetime.fromtimestamp(wall, dt.UTC)
        routed = with_rules(decision, rules, facts_of(decision), at)
        if not self._rotating(call, routed):
            self.feed(call, self._routed_event(routed), now)

    def _routed_event(self, r: Route) -> Routed:
        """The routing answer for a call: its route less the targets that are down
        (target health), with the tracker's media settings when rtpengine is there."""
        if self.health is not None:
            r = self.health.healthy(r)
        media = self.settings().media.for_tracker(r.tracker.id) if self.media else None
        return Routed(r, media)

    # -- routing that waits for the attribution ---------------------------------------

    def _wait_attribution(self, call: Call, r: Route, rules: TrackerRules | None,
                          pbx: PbxHeaders | None, wall: float) -> None:
        assert self.attribute is not None
        loop = self.stack.loop
        timer = loop.call_later(ATTRIBUTION_WAIT, self._routed, call.id, None, None)
        self._routing[call.id] = (r, rules, pbx, timer)
        loop.create_task(self._attribute_and_route(
            call.id, self.attribute(r.tracker, r.did, r.caller, wall)))

    async def _attribute_and_route(
            self, call_id: str, asked: Awaitable[tuple[Attribution, bool | None]]) -> None:
        try:
            attribution, first_time = await asked
        except Exception as exc:  # tracking failed: the rules see no attribution
            log.warning("b2bua.routing_attribution_failed", call=call_id,
                        error=type(exc).__name__)
            attribution, first_time = None, None
        self._routed(call_id, attribution, first_time)

    def _respond_trying(self, txn: ServerTransaction, req: Request) -> None:
        """100 Trying before the call answers (§8.2.6.1: no To tag): the carrier stops
        retransmitting the INVITE while the routing webhook is asked."""
        self.stack.layer.respond(txn, response_for(req, 100), self.stack.clock())
        self.stack.flush()

    async def _ask_webhook(self, call_id: str, hook: RoutingWebhook, wall: float) -> None:
        pending = self._routing.get(call_id)
        client = self.routing_client
        if pending is None or client is None:
            return
        r, rules, pbx, _ = pending
        started = self.stack.clock()  # `ms` in the log: the set-up time the wait adds
        attribution: Attribution | None = None
        first_time: bool | None = None
        if self.attribute is not None:
            try:
                attribution, first_time = await bounded(
                    self.stack.loop, self.attribute(r.tracker, r.did, r.caller, wall),
                    ATTRIBUTION_WAIT)
            except Exception as exc:  # tracking failed: the webhook hears of no visitor
                log.warning("b2bua.routing_attribution_failed", call=call_id,
                            error=type(exc).__name__)
        attributed = self.stack.clock()
        at = dt.datetime.fromtimestamp(self.wall(), dt.UTC)
        ruled = with_rules(r, rules, facts_of(r, attribution, first_time), at, attribution,
                           first_time, pbx)
        body = payload(call_id, r.tracker, r.did, r.caller, r.carrier, wall, attribution,
                       first_time, hook, ruled.rule, ruled.targets)
        answer: Answer | str
        try:
            answer = await client.ask(hook, body)
        except Exception:  # a bug must not leave the call waiting: the rules route it
            log.exception("b2bua.routing_webhook_failed", call=call_id)
            answer = "error"
        took = round((self.stack.clock() - started) * 1000, 1)
        post = round((self.stack.clock() - attributed) * 1000, 1)  # of which the POST
        if self._routing.pop(call_id, None) is None:
            return
        call = self.calls.get(call_id)
        if call is None:
            return  # the caller gave up meanwhile
        if isinstance(answer, str):  # slow, failing, malformed: the rules route the call
            log.warning("b2bua.routing_webhook_ignored", call=call_id, reason=answer,
                        ms=took, post_ms=post)
            routed = ruled
        else:
            log.info("b2bua.routing_webhook", call=call_id, ms=took, post_ms=post,
                     reject=answer.reject,
                     targets=[t.uri for t in answer.targets or ()])
            routed = with_answer(ruled, answer.targets, answer.reject, answer.caller_name)
        if not self._rotating(call, routed):
            self._input(call, self._routed_event(routed))

    def _routed(self, call_id: str, attribution: Attribution | None,
                first_time: bool | None) -> None:
        """The attribution is in (or its wait is over, both None): route the call."""
        pending = self._routing.pop(call_id, None)
        call = self.calls.get(call_id)
        if pending is None or call is None:
            return  # routed already (the wait ran out), or the caller gave up
        r, rules, pbx, timer = pending
        if timer is not None:
            timer.cancel()
        if attribution is None:
            log.info("b2bua.routing_without_attribution", call=call_id)
        at = dt.datetime.fromtimestamp(self.wall(), dt.UTC)
        routed = with_rules(r, rules, facts_of(r, attribution, first_time), at,
                            attribution, first_time, pbx)
        if not self._rotating(call, routed):
            self._input(call, self._routed_event(routed))

    # -- hunt round_robin: the call's turn from the store's shared count (rotation.py) --

    def _rotating(self, call: Call, r: Route) -> bool:
        """Whether the call waits in ROUTING for its turn in a round_robin hunt (at most
        `[store] rotation_wait`); it is then routed by `_rotated`. False: route it now."""
        if self.rotation is None or not self.rotation.wanted(r):
            return False
        self.rotation.route(self.stack.loop, r, lambda turned: self._rotated(call.id, turned))
        return True

    def _rotated(self, call_id: str, r: Route) -> None:
        call = self.calls.get(call_id)
        if call is not None:  # else the caller gave up meanwhile (487, as in ROUTING)
            self._input(call, self._routed_event(r))

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

    # -- bookkeeping for calls ---------------------------------------------------------

    def _finished(self, call: Call, now: float) -> None:
        self.calls.pop(call.id, None)
        pending = self._routing.pop(call.id, None)
        if pending is not None and pending[3] is not None:
            pending[3].cancel()
        for leg in call.legs:
            self.dialogs.pop((leg.dialog.call_id, leg.dialog.local_tag), None)
        for handle in self._timers.pop(call.id, {}).values():
            handle.cancel()
        self.on_call_finished()
        # 64*T1 is the longest a transaction of the call may still report (Timer B/F)
        wait = 64 * self.settings().sip.t1 + 1.0
        self._ended[call.id] = call
        self._linger.append((now + wait, call.id))
        if self._linger_timer is None:
            self._linger_timer = self.stack.loop.call_later(wait, self._prune)

    def _prune(self) -> None:
        self._linger_timer = None
        now = self.stack.clock()
        linger = self._linger
        while linger and linger[0][0] <= now:
            self._ended.pop(linger.popleft()[1], None)
        if linger:
            self._linger_timer = self.stack.loop.call_later(
                max(0.05, linger[0][0] - now), self._prune)

    @property
    def lingering_calls(self) -> int:
        """Ended calls kept for their transactions' last answers."""
        return len(self._linger)


def _add_to_tag(resp: Response) -> None:
    to = resp.headers.get("To") or ""
    if ";tag=" not in to.replace(" ", "").lower():
        resp.headers.set("To", f"{to};tag={new_tag()}")
