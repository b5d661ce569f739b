"""Routing that waits: a new call in ROUTING until its route is known.

Routing needs only configuration, unless the tracker's routing rules ask what only the
attribution knows (`TrackerRules.needs_attribution`: the visitor's channel, source,
campaign, landing page, first-time caller) or the tracker hands the attribution to its
PBX. Then the call waits in ROUTING for `attribute` at most `ATTRIBUTION_WAIT` seconds;
late, failing or absent, the rules see no attribution (tracking never costs a call,
only the rules that ask about it). A tracker with a routing webhook (routing_webhook.py)
answers 100 Trying and 180 Ringing at once (`ringing = false`: 100 only), then asks its
webhook (with the attribution, waited for as above) at most the webhook's `timeout`; no
usable answer in time, the rules route the call. A route whose hunt is `round_robin`
then waits for its turn (rotation.py: `_rotating`, the one place the route's targets
are reordered before the call sees them).
A call that ends while it waits (CANCEL, shutdown) drops the wait: its timer or the
webhook's task is cancelled.

`RoutingWaits` is the engine's layer for this (on media_tasks.py's `MediaTasks`): the
engine (engine.py) hands it each new call with its `Route` (`_route_call`); it feeds the
call `Routed`, at once or when the wait is over, with the targets that are down left out
(target health) and the tracker's media settings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from ..aio import bounded
from ..sip.endpoint import ServerTransaction
from ..sip.message import Request, response_for
from .call import Call
from .commands import Routed
from .health import TargetProber
from .legs import response
from .media_tasks import MediaTasks
from .pbx_headers import PbxHeaders
from .rotation import Rotation
from .routing import Route, facts_of, with_answer, with_rules
from .routing_webhook import Answer, RoutingWebhook, RoutingWebhookClient, payload
from .rules import TrackerRules

if TYPE_CHECKING:
    from ..config import Settings
    from ..tracking.model import Attribution, Tracker

log = structlog.get_logger("calltrackd.b2bua")

ATTRIBUTION_WAIT = 0.25  # seconds a call waits for tracking when its rules need it
# (tracker, did, caller, Unix time) → the attribution and whether the caller is new
AttributeFn = Callable[["Tracker", str, str, float],
                       Awaitable[tuple["Attribution", bool | None]]]


class RoutingWaits(MediaTasks):
    """New calls routed, at once or after their waits (see the module's docstring)."""

    def _init_layer(self) -> None:
        """Target health, tracking, the routing webhooks, the calls waiting."""
        super()._init_layer()
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

    def _route_call(self, call: Call, decision: Route, settings: Settings,
                    txn: ServerTransaction, req: Request, now: float, wall: float) -> None:
        """A new call's route: by the rules now, or after the attribution or the routing
        webhook is asked."""
        rules = settings.routes.get(decision.tracker.id)
        pbx = settings.pbx.get(decision.tracker.id)
        if pbx is not None and not pbx.wanted:
            pbx = None
        hook = settings.routing_webhooks.get(decision.tracker.id)
        if hook is not None and self.routing_client is not None:
            self._respond_trying(txn, req, call if hook.ringing else None)
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

    def _respond_trying(self, txn: ServerTransaction, req: Request,
                        ringing: Call | None = None) -> None:
        """100 Trying before the call answers (§8.2.6.1: no To tag): the carrier stops
        retransmitting the INVITE while the routing webhook is asked. `ringing`: also a
        180 Ringing in the call's own early dialog (its To tag, Contact and Record-Route,
        as the call's later answers), so the caller hears ringback meanwhile."""
        now = self.stack.clock()
        self.stack.layer.respond(txn, response_for(req, 100), now)
        if ringing is not None:
            self.stack.layer.respond(
                txn, response(ringing.host, ringing.a, req, 180, dialog_forming=True), now)
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

    def _finished(self, call: Call, now: float) -> None:
        pending = self._routing.pop(call.id, None)
        if pending is not None and pending[3] is not None:
            pending[3].cancel()  # the call ended while it waited
        super()._finished(call, now)
