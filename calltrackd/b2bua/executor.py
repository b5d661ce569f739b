"""The command executor: events into calls, and the commands they return carried out.

`Executor` is the base of the engine (engine.py). `feed` gives an event to a call and
executes the commands it returns, in order: a table maps each command's type to the
method that carries it out (send through the transaction layer, answer, timers on the
loop, DNS by getaddrinfo, the hooks, log lines, the end of the call). The layers above
add the commands they own to the table (media_tasks.py: rtpengine's offers, answers and
deletes). An input of the engine's own (a timer firing, a DNS answer, a task's result)
goes through `_input`: fed, then flushed. Ended calls linger while their transactions
may still report.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..sip.endpoint import Address
from ..sip.transaction import TransactionError
from ..sip.uri import SipURI
from .call import Call, CallStateError
from .commands import (
    CallEvent,
    CallInfo,
    CancelTimer,
    Finished,
    Log,
    Notify,
    RegisterDialog,
    Resolve,
    Resolved,
    ResolveFailed,
    Respond,
    SendAck,
    SendRequest,
    StartTimer,
    Terminate,
    TimerFired,
)
from .legs import Leg, default_port

if TYPE_CHECKING:
    from ..config import Settings
    from ..transport.stack import SipStack

log = structlog.get_logger("calltrackd.b2bua")

RESOLVE_TIMEOUT = 5.0
# what carries out one kind of command: (the call, the command, the input's time)
Runner = Callable[[Call, Any, float], None]


class CallHooks(Protocol):
    """What the rest of calltrackd learns about calls (tracking, CDRs, metrics, logs)."""

    def call_started(self, call: CallInfo) -> None: ...
    def call_forwarded(self, call: CallInfo, seconds: float) -> None: ...
    def call_answered(self, call: CallInfo) -> None: ...
    def call_ended(self, call: CallInfo) -> None: ...


class Executor:
    """Runs the calls: feeds them events and executes their commands (see the module)."""

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
        self.dialogs: dict[tuple[str, str], tuple[Call, Leg]] = {}  # (Call-ID, our tag)
        # called once a call has left `calls` (the drain waits on it instead of polling)
        self.on_call_finished: Callable[[], None] = lambda: None
        # the calls' timers: call id → timer name → handle (the handle names the call by
        # its id, so a call holds no handle and no handle keeps an ended call)
        self._timers: dict[str, dict[str, asyncio.TimerHandle]] = {}
        # ended calls stay while their transactions may still report (a 2xx that crossed
        # our CANCEL must be ACKed and hung up): legs name their call by id
        self._ended: dict[str, Call] = {}
        self._linger: deque[tuple[float, str]] = deque()
        self._linger_timer: asyncio.TimerHandle | None = None
        # command type → what carries it out; the layers above add theirs
        self._runners: dict[type, Runner] = {
            Respond: self._run_respond,
            Notify: self._run_notify,
            SendRequest: self._run_send_request,
            Log: self._run_log,
            StartTimer: self._run_start_timer,
            CancelTimer: self._run_cancel_timer,
            RegisterDialog: self._run_register_dialog,
            SendAck: self._run_send_ack,
            Finished: self._run_finished,
            Resolve: self._run_resolve,
        }
        self._init_layer()

    def _init_layer(self) -> None:
        """The state of a layer above (its attributes, its commands' runners): each
        layer calls its base's first. The executor has none of its own."""

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
        runners = self._runners
        for command in commands:
            runners[type(command)](call, command, now)

    def _input(self, call: Call, event: CallEvent) -> None:
        """An input of the engine's own (a timer, a DNS answer): fed, then flushed."""
        try:
            self.feed(call, event)
        except Exception:  # one bad call must never take the engine down
            log.exception("b2bua.event_failed", call_event=type(event).__name__, call=call.id)
        self.stack.flush()

    def terminate(self, call: Call, reason: str = "shutdown") -> None:
        """End a call from our side (shutdown grace over): BYE or 503 to the caller."""
        self._input(call, Terminate(reason))

    def terminate_all(self, reason: str = "shutdown") -> None:
        for call in list(self.calls.values()):
            self.terminate(call, reason)

    # -- the commands ------------------------------------------------------------------

    def _run_respond(self, call: Call, c: Respond, now: float) -> None:
        self.stack.layer.respond(c.transaction, c.response, now)

    def _run_send_request(self, call: Call, c: SendRequest, now: float) -> None:
        txn = self.stack.layer.send_request(c.request, c.dest, now)
        txn.user = c.leg if c.track else None

    def _run_send_ack(self, call: Call, c: SendAck, now: float) -> None:
        try:
            self.stack.layer.send_ack(c.transaction, c.ack)
        except TransactionError:
            pass  # the transaction holds its ACK already, or is gone

    def _run_register_dialog(self, call: Call, c: RegisterDialog, now: float) -> None:
        self.dialogs[(c.leg.dialog.call_id, c.leg.dialog.local_tag)] = (call, c.leg)

    def _run_log(self, call: Call, c: Log, now: float) -> None:
        (log.warning if c.level == "warning" else log.info)(c.event, **c.fields)

    def _run_notify(self, call: Call, c: Notify, now: float) -> None:
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

    def _run_start_timer(self, call: Call, c: StartTimer, now: float) -> None:
        timers = self._timers.setdefault(call.id, {})
        old = timers.pop(c.name, None)
        if old is not None:
            old.cancel()
        loop = self.stack.loop
        timers[c.name] = loop.call_at(loop.time() + max(0.0, c.at - now), self._fire,
                                      call.id, c.name)

    def _run_cancel_timer(self, call: Call, c: CancelTimer, now: float) -> None:
        handle = self._timers.get(call.id, {}).pop(c.name, None)
        if handle is not None:
            handle.cancel()

    def _fire(self, call_id: str, name: str) -> None:
        timers = self._timers.get(call_id)
        if timers is not None:
            timers.pop(name, None)
        call = self.calls.get(call_id)
        if call is not None:
            self._input(call, TimerFired(name))

    def _run_resolve(self, call: Call, c: Resolve, now: float) -> None:
        self.stack.loop.create_task(self._resolve(call, c.uri))

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

    async def _getaddrinfo(self, host: str, port: int) -> str:
        infos = await asyncio.wait_for(self.stack.loop.getaddrinfo(host, port, type=0),
                                       RESOLVE_TIMEOUT)
        if not infos:
            raise OSError(f"no address for {host}")
        return str(infos[0][4][0])

    # -- bookkeeping for calls ---------------------------------------------------------

    def _run_finished(self, call: Call, c: Finished, now: float) -> None:
        self._finished(call, now)

    def _finished(self, call: Call, now: float) -> None:
        """The call is over: its dialogs and timers go, the call lingers for 64·T1."""
        self.calls.pop(call.id, None)
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

    def _call_of(self, leg: Leg) -> Call | None:
        """The call of a leg: live, or ended and lingering for its transactions."""
        call_id = leg.call_id
        return self.calls.get(call_id) or self._ended.get(call_id)
