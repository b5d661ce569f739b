"""Target health: OPTIONS probes to every forward target, and the hunt skipping the dead.

Every `sip.target_probe_interval` seconds (0: off, the default) each forward target of
every tracker gets one OPTIONS, sent through the engine's transaction layer; a URI that
several trackers name is probed once. Verdicts, as Kamailio's dispatcher gives them
(`ds_ping_reply_codes`, `ds_probing_threshold`, `ds_inactive_threshold` = 1):

- a 2xx, or a status `sip.target_probe_up_codes` lists ("404", or a class "4xx"), is a
  success; any other answer (a 503 of the target's, or the 503 the transport makes up
  for a refused TCP connection), no answer within `sip.target_probe_timeout`, or a name
  that does not resolve, is a failure;
- `sip.target_probe_failures` failures in a row (default 2) take a target down; one
  success puts it back up. A target not probed yet counts as up.

The hunt: `usable(targets)` keeps the targets in their order minus those that are down;
when every one is down it returns them all, in order (the health seen may be a probe
interval old, so the call tries everything rather than nothing).

`Health` is the sans-I/O core (the targets, the time and the answers in, the probes to
send out); `TargetProber` runs it on the loop for the engine (`engine.health`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from .. import ids
from ..sip.dialog import Dialog
from ..sip.endpoint import Address, ResponseReceived, TransactionTimeout, new_branch, new_tag
from ..sip.message import Via
from ..sip.uri import SipSyntaxError, SipURI
from ..tracking.model import ForwardTarget
from .legs import default_port, literal_address

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from ..config import Settings, SipSettings
    from ..transport.stack import SipStack
    from .routing import Route

log = structlog.get_logger("calltrackd.b2bua")

__all__ = ["Change", "Health", "Probe", "ProbePolicy", "ProbeTicket", "TargetProber",
           "targets_of"]


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    interval: float = 0.0  # seconds between probes of a target; 0: no probes
    timeout: float = 5.0  # no answer within this (at most `interval`): a failure
    failures: int = 2  # failures in a row that take a target down
    up_codes: tuple[str, ...] = ()  # besides 2xx: "404", "4xx"

    @classmethod
    def of(cls, sip: SipSettings) -> ProbePolicy:
        return cls(sip.target_probe_interval, sip.target_probe_timeout,
                   sip.target_probe_failures, sip.target_probe_up_codes)

    @property
    def wait(self) -> float:
        return min(self.timeout, self.interval) if self.interval > 0 else self.timeout

    def success(self, status: int) -> bool:
        if 200 <= status < 300:
            return True
        code = str(status)
        return any(c == code or (c[1:] == "xx" and c[0] == code[0]) for c in self.up_codes)


@dataclass(frozen=True, slots=True)
class Probe:
    """Send an OPTIONS to `uri`; report its answer with `seq`."""

    uri: str
    seq: int


@dataclass(frozen=True, slots=True)
class Change:
    """A target went down or came back up."""

    uri: str
    up: bool
    trackers: tuple[str, ...]
    result: str  # what decided it: "200", "503", "timeout", "unresolved: ..."
    failures: int


@dataclass(slots=True)
class _Target:
    trackers: tuple[str, ...]
    next_at: float
    up: bool = True
    failures: int = 0
    seq: int = 0  # the probe in flight (0: none)
    sent_at: float = 0.0
    probed: bool = False


def targets_of(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Every forward target's URI → the trackers that name it (in configuration order)."""
    out: dict[str, list[str]] = {}
    for tracker in settings.trackers:
        for target in tracker.forward:
            ids = out.setdefault(target.uri, [])
            if tracker.id not in ids:
                ids.append(tracker.id)
    return {uri: tuple(ids) for uri, ids in out.items()}


class Health:
    """The verdicts, sans-I/O: `configure` with the targets, `poll(now)` for the probes
    due (and the ones that timed out), `answered`/`failed` with their results, `usable`
    for a hunt. `changes` collects what went down or up since it was last emptied."""

    def __init__(self, policy: ProbePolicy = ProbePolicy()) -> None:
        self.policy = policy
        self.targets: dict[str, _Target] = {}
        self.changes: list[Change] = []
        self._seq = 0

    def configure(self, targets: Mapping[str, tuple[str, ...]], policy: ProbePolicy,
                  now: float) -> None:
        """The targets to watch (a reload may change them): new ones are probed at once,
        those that stay keep their verdict, the rest are forgotten."""
        self.policy = policy
        old = self.targets
        self.targets = {}
        for uri, trackers in targets.items():
            t = old.get(uri)
            if t is None:
                t = _Target(trackers, now)
            t.trackers = trackers
            self.targets[uri] = t

    def poll(self, now: float) -> list[Probe]:
        if self.policy.interval <= 0:
            for t in self.targets.values():  # probes off: nothing is down
                t.up, t.failures, t.seq, t.probed = True, 0, 0, False
            return []
        out = []
        wait = self.policy.wait
        for uri, t in self.targets.items():
            if t.seq and now >= t.sent_at + wait:
                self._result(uri, t, False, "timeout")
            if not t.seq and now >= t.next_at:
                self._seq += 1
                t.seq, t.sent_at = self._seq, now
                t.next_at = now + self.policy.interval
                out.append(Probe(uri, t.seq))
        return out

    def next_deadline(self) -> float | None:
        """When `poll` has something to do next (None: nothing to watch)."""
        if self.policy.interval <= 0 or not self.targets:
            return None
        wait = self.policy.wait
        return min(t.sent_at + wait if t.seq else t.next_at for t in self.targets.values())

    def answered(self, probe: Probe, status: int) -> None:
        if status < 200:
            return  # a provisional: the final answer decides
        t = self._current(probe)
        if t is not None:
            self._result(probe.uri, t, self.policy.success(status), str(status))

    def failed(self, probe: Probe, reason: str) -> None:
        t = self._current(probe)
        if t is not None:
            self._result(probe.uri, t, False, reason)

    def _current(self, probe: Probe) -> _Target | None:
        """The target of a probe still awaited (a late answer, or one for a target
        removed since, is ignored)."""
        t = self.targets.get(probe.uri)
        return t if t is not None and t.seq == probe.seq else None

    def _result(self, uri: str, t: _Target, ok: bool, result: str) -> None:
        t.seq = 0
        t.probed = True
        if ok:
            t.failures = 0
            if not t.up:
                t.up = True
                self.changes.append(Change(uri, True, t.trackers, result, 0))
            return
        t.failures += 1
        if t.up and t.failures >= self.policy.failures:
            t.up = False
            self.changes.append(Change(uri, False, t.trackers, result, t.failures))

    def is_up(self, uri: str) -> bool:
        t = self.targets.get(uri)
        return t is None or t.up

    def usable(self, targets: Sequence[ForwardTarget]) -> tuple[ForwardTarget, ...]:
        """The targets a hunt tries: those not down, in order; all of them when every
        one is down (the last resort)."""
        alive = tuple(t for t in targets if self.is_up(t.uri))
        return alive or tuple(targets)

    def states(self) -> Iterable[tuple[str, str, bool]]:
        """(tracker, target URI, up) for every target probed at least once."""
        for uri, t in self.targets.items():
            if t.probed:
                for tracker in t.trackers:
                    yield tracker, uri, t.up


@dataclass(frozen=True, slots=True)
class ProbeTicket:
    """What a probe's client transaction carries as its user: the engine hands its
    answer or timeout to `prober.on_event`."""

    prober: TargetProber
    probe: Probe


class TargetProber:
    """`Health` on the loop: sends the OPTIONS through the stack's transaction layer
    (the engine routes their answers back through `ProbeTicket`), keeps the gauge
    calltrackd_target_up{tracker,target} and logs `target.down` / `target.up`."""

    def __init__(self, stack: SipStack, settings: Callable[[], Settings],
                 gauge: Gauge | None = None) -> None:
        self.stack = stack
        self.settings = settings
        self.gauge = gauge
        self.health = Health()
        self.resolver: Callable[[str, int], Awaitable[str]] = self._getaddrinfo
        self._configured: object = None
        self._published: set[tuple[str, str]] = set()  # the gauge's label values
        self._lookups: set[asyncio.Task[None]] = set()  # names being resolved (held)

    # -- the engine's side -------------------------------------------------------------

    def healthy(self, route: Route) -> Route:
        """The route with its down targets left out (all kept when all are down)."""
        targets = self.health.usable(route.targets)
        return route if targets == route.targets else route.replace(targets=targets)

    def on_event(self, ticket: ProbeTicket, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self.health.answered(ticket.probe, event.response.status)
        elif isinstance(event, TransactionTimeout):
            self.health.failed(ticket.probe, "timeout")
        self._publish()

    # -- the loop ----------------------------------------------------------------------

    def tick(self) -> float | None:
        """Configure from the live settings, send what is due, publish verdicts; the
        time of the next thing to do."""
        settings = self.settings()
        now = self.stack.clock()
        if settings is not self._configured:
            self._configured = settings
            self.health.configure(targets_of(settings), ProbePolicy.of(settings.sip), now)
        for probe in self.health.poll(now):
            self._send(probe, now)
        self.stack.flush()
        self._publish(gauge=True)
        return self.health.next_deadline()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                at = self.tick()
            except Exception:  # probing must never stop the daemon
                log.exception("target.probe_failed")
                at = None
            # at most a second asleep: a reload's new targets are probed soon
            delay = 1.0 if at is None else min(1.0, max(0.01, at - self.stack.clock()))
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    def _send(self, probe: Probe, now: float) -> None:
        try:
            uri = SipURI.parse(probe.uri).with_(headers=None)
        except SipSyntaxError:
            self.health.failed(probe, "bad uri")
            return
        addr = literal_address(uri)
        if addr is not None:
            self._options(probe, uri, addr, now)
        else:
            task = self.stack.loop.create_task(self._resolve_and_send(probe, uri))
            if task is not None:  # (the tests' loop runs it at once)
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)

    async def _resolve_and_send(self, probe: Probe, uri: SipURI) -> None:
        port = default_port(uri)
        try:
            host = await self.resolver(uri.host_bare, port)
        except OSError as exc:
            self.health.failed(probe, f"unresolved: {exc}"[:120])
            self._publish()
            return
        self._options(probe, uri, Address(uri.transport, host, port), self.stack.clock())
        self.stack.flush()

    def _options(self, probe: Probe, uri: SipURI, addr: Address, now: float) -> None:
        host, port = self.stack.local_hostport(addr.transport, addr.host)
        tag = new_tag()
        dialog = Dialog(ids.token_urlsafe(16) + "@calltrackd", tag,
                        f"<sip:calltrackd@{host}>;tag={tag}", f"<{uri}>", str(uri))
        req = dialog.request("OPTIONS", Via.own(addr.transport, host, port, new_branch()))
        req.headers.add("Accept", "application/sdp")
        req.headers.add("User-Agent", self.settings().sip.user_agent)
        txn = self.stack.layer.send_request(req, addr, now)
        txn.user = ProbeTicket(self, probe)

    async def _getaddrinfo(self, host: str, port: int) -> str:
        infos = await asyncio.wait_for(self.stack.loop.getaddrinfo(host, port, type=0), 5.0)
        if not infos:
            raise OSError(f"no address for {host}")
        return str(infos[0][4][0])

    def _publish(self, gauge: bool = False) -> None:
        """Log what went down or up; with `gauge`, set calltrackd_target_up too (once per
        tick: a cost per target, not per answer)."""
        health = self.health
        for c in health.changes:
            (log.warning if not c.up else log.info)(
                "target.down" if not c.up else "target.up", target=c.uri,
                trackers=list(c.trackers), result=c.result, failures=c.failures)
        health.changes.clear()
        if not gauge or self.gauge is None:
            return
        seen = {(tracker, uri): up for tracker, uri, up in health.states()}
        for labels in self._published - seen.keys():
            self.gauge.remove(*labels)
        for (tracker, uri), up in seen.items():
            self.gauge.labels(tracker, uri).set(1 if up else 0)
        self._published = set(seen)
