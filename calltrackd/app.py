"""Builds and wires the parts, owns start/stop, signals and the drain.

start: store → tracking → SIP (transaction layer, sockets, engine) → HTTP → workers.
Each part registers its cleanup on an `AsyncExitStack` only once its start succeeded
(aiohttp's `cleanup_ctx`): a start that fails halfway closes what had started, in
reverse, and nothing else, and `serve` logs one `app.start_failed` line naming the step.
The background workers run in one `asyncio.TaskGroup` (under a supervisor task): stop
asks them to finish, waits a bounded time, then cancels and awaits what is left. A
worker that crashes is logged (`app.worker_failed`) and starts a drain: the daemon exits
1 and its service manager restarts it.

stop (SIGTERM/SIGINT): refuse new INVITEs with 503 + Retry-After, let running calls finish
within `sip.shutdown_grace` (waiting on an event the engine sets when the last call ends),
end the rest, flush call records and the webhook outbox, close in reverse order. A second
signal ends the wait at once. Signal handlers are removed again however `serve` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import structlog
from aiohttp import web

from . import b2bua, sip
from .b2bua.commands import CallInfo
from .b2bua.engine import Engine
from .b2bua.health import TargetProber
from .b2bua.rotation import Rotation
from .b2bua.routing_webhook import RoutingWebhookClient
from .backoff import Backoff
from .config import ConfigError, Settings, load_config
from .exports import OutboxDestinations, OutboxRows
from .gcpolicy import CollectorPolicy
from .http import api, keys
from .http import auth as auth_api
from .http import recordings as recordings_api
from .http import reports as reports_api
from .http import tracking as tracking_api
from .http import ui as dashboard
from .logging import flush_suppressed
from .media.service import Media
from .media.store import RecordingInfo
from .metrics import DictCounter, Metrics
from .overload import LoopLagMonitor
from .recorder import Recorder
from .sdnotify import Notifier
from .sip.endpoint import Address, TransactionLayer
from .sip.transaction import TimerConfig
from .store import create_store
from .tracking.service import TrackingService
from .transport.stack import Listen, SipStack
from .transport.strangers import StrangerGate, StrangerSettings
from .transport.streams import ConnectionLimits
from .transport.tls import TlsContexts
from .webhooks.worker import WebhookWorker

log = structlog.get_logger("calltrackd")

PROBE_INTERVAL = 1.0  # seconds between store write probes (the node's heartbeat)
PROBE_TIMEOUT = 2.0  # a write that takes longer counts as a failure
WORKER_GRACE = 10.0  # seconds the workers get to finish on stop before they are cancelled


class StartError(Exception):
    """A part of the daemon did not start: `step` names it (store, tracking, sip, http);
    the parts started before it have been stopped again."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.step = step


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise StartError(name, exc) from exc


def node_id(settings: Settings) -> str:
    """This node's name in the store: `[store] node_id`, else `HOSTNAME:SIPPORT` (the host
    name and the first SIP listen port: two nodes on one host differ by port)."""
    if settings.store.node_id:
        return settings.store.node_id
    port = settings.sip.listen[0].port if settings.sip.listen else 0
    return f"{socket.gethostname()}:{port}"


# keys SIGHUP cannot apply to a running process: they are listed, and need a restart
RESTART_KEYS = frozenset({
    "sip.listen", "sip.advertise", "sip.t1", "sip.t2", "sip.t4", "sip.max_message_size",
    "sip.user_agent", "http.host", "http.port", "http.header_timeout", "http.body_timeout",
    "http.session_rate_limit", "http.session_rate_burst", "store.url", "store.node_id",
    "log.level", "log.format", "webhooks.timeout", "webhooks.backoff_base",
    "webhooks.backoff_cap", "webhooks.max_age", "webhooks.concurrency",
})


def config_changes(old: Settings, new: Settings) -> list[str]:
    """The keys that differ between two configurations (`sip.listen`, `trackers.acme`,
    `carriers`...), secrets by name only."""
    changed = []
    for section in ("sip", "http", "store", "log", "webhooks"):
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"{section}.{f.name}")
    if old.carriers != new.carriers:
        changed.append("carriers")
    before = {t.id: t for t in old.trackers}
    after = {t.id: t for t in new.trackers}
    changed += [f"trackers.{i}" for i in sorted(before.keys() | after.keys())
                if before.get(i) != after.get(i)]
    return changed


class App:
    def __init__(self, settings: Settings, shutdown: asyncio.Event | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        # wall-clock seconds for everything this module and the HTTP API decide on time
        # (heartbeats, crash recovery, sessions, windows); the SIP stack keeps its own
        # monotonic timer clock
        self.clock = clock
        self.shutdown = shutdown or asyncio.Event()
        self.force = asyncio.Event()
        self.metrics = Metrics()
        self.store = create_store(settings.store.url, settings.store.retention)
        self.node_id = self.store.node_id = node_id(settings)
        self.boot = clock()  # calls of this process start after this
        self.tracking = TrackingService(self.store, settings.trackers, clock)
        self.media = Media(settings.media, self.metrics)  # rtpengine client, recordings
        layer = TransactionLayer(
            TimerConfig(settings.sip.t1, settings.sip.t2, settings.sip.t4),
            settings.sip.max_message_size,
        )
        self.stack = SipStack(layer, advertise=settings.sip.advertise,
                              tls=TlsContexts(settings.sip.tls),
                              limits=ConnectionLimits.of(settings.sip))
        # a TLS connection verifies the configured target's host name (transport/tls.py)
        self.stack.tls_targets = lambda: [
            t.uri for tracker in self.settings.trackers for t in tracker.forward]
        self.stack.taps.append(self.metrics.sip_tap)
        if settings.log.level == "debug":
            self.stack.taps.append(_sip_trace)
        wh = settings.webhooks
        self.webhooks = WebhookWorker(
            self.store, self._webhook_secret, on_result=self._webhook_result,
            per_endpoint_concurrency=wh.concurrency, initial_concurrency=wh.initial_concurrency,
            timeout=wh.timeout, max_age=wh.max_age,
            backoff=Backoff(wh.backoff_base, wh.backoff_cap, jitter=True),
            resolve=OutboxDestinations(lambda: self.settings.trackers),
            on_outcome=self.metrics.outbox_outcome, on_skip=self.metrics.outbox_skip)
        outbox = OutboxRows(lambda: self.settings.http.public_url, self.metrics.outbox_skip)
        self.recorder = Recorder(self.tracking, self.metrics, self.webhooks.notify,
                                 outbox.rows)
        self.engine = Engine(self.stack, lambda: self.settings, self.recorder)
        # a TCP or TLS connection stays open while a call or dialog sends over it
        self.stack.connection_users = self._connection_users
        self.prober = TargetProber(self.stack, lambda: self.settings, self.metrics.target_up)
        self.engine.health = self.prober  # OPTIONS to the targets; down ones skipped
        if self.media.client is not None:  # trackers with media = "anchor" go through it
            self.engine.media = self.media
        self.media.on_recording = self._recording_stored
        self.engine.attribute = self.tracking.attribute  # for rules that need it
        self.routing_webhooks = RoutingWebhookClient()
        self.engine.routing_client = self.routing_webhooks
        self.engine.rotation = Rotation(  # hunt round_robin's turns, counted in the store
            self.store.rotate, lambda: self.settings.store.rotation_wait)
        # strangers (no carrier, trusted source or peer) cost nothing: the ACL is the live
        # settings' (a reload changes carriers), the dialogs the engine's
        self.strangers = StrangerGate(
            lambda host: self.settings.carrier_for(host) is not None,
            lambda call_id, tag: (call_id, tag) in self.engine.dialogs,
            StrangerSettings.of(settings.sip), self.metrics.stranger_counts)
        self.stack.use_gate(self.strangers)
        self.load = LoopLagMonitor()
        self.gc_policy = CollectorPolicy(lambda: self.engine.active_calls)
        self.engine.overloaded = lambda: self.load.overloaded
        # the daemon's own figures, read when /metrics is scraped: nothing counted twice
        m = self.metrics
        m.count_active_calls(lambda: self.engine.active_calls)
        m.overload_rejects.count = lambda: self.engine.rejected_overload
        m.sip_retransmissions.count = lambda: self.stack.layer.retransmissions
        m.sip_queue_delay.set_function(lambda: self.load.queue_delay)
        m.watch_loop(self.load)
        self.metrics.registry.register(DictCounter(
            "calltrackd_dialog_rejected", "In-dialog requests refused: wrong source or tags",
            ["reason", "method"], self.engine.dialog_rejects))
        self.metrics.registry.register(DictCounter(
            "calltrackd_sip_connections_closed", "TCP and TLS connections we closed: idle, "
            "or over the per-source or total bound", ["transport", "reason"],
            self.stack.conns.closed))
        self.metrics.registry.register(DictCounter(
            "calltrackd_shed_calls", "INVITEs answered 503 before a call existed",
            ["reason", "tracker"], self.engine.shed))
        self.http_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self._parts: contextlib.AsyncExitStack | None = None  # what start() started
        self._workers: asyncio.Task[None] | None = None  # the supervisor of the TaskGroup
        self._workers_stop = asyncio.Event()
        self.failed = False  # a worker crashed: serve() exits 1
        self._idle = asyncio.Event()  # set when the last call has ended
        self.engine.on_call_finished = self._call_finished
        self._sip_up = False
        self.systemd = Notifier()
        self.metrics.set_build_info(sip.NATIVE)
        # the store write probe (heartbeat): its latest verdict, read by /healthz
        self.store_error: str | None = "not probed yet"
        self._store_down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._prior_heartbeat: float | None = None
        self._recovery_pending = True

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the parts in order; StartError when one fails, after the parts started
        before it have been stopped (in reverse)."""
        async with contextlib.AsyncExitStack() as parts:
            parts.callback(self.systemd.close)
            with _step("store"):
                await self.store.open()  # closes what it opened when it fails
            parts.push_async_callback(self._close_store)
            with _step("tracking"):
                await self.tracking.start()
            await self.probe_store()  # first verdict (and the previous run's heartbeat)
            with _step("sip"):
                await self._start_sip()
            parts.push_async_callback(self._close_sip)
            self.load.probes = self.stack.queue_probes
            self.load.start()
            parts.callback(self.load.stop)
            parts.callback(self.media.close)
            parts.push_async_callback(self.routing_webhooks.close)
            with _step("http"):
                runner = await self._start_http()
            parts.push_async_callback(runner.cleanup)
            # Long-lived objects (config, modules) leave the collector's view for good;
            # then only small, automatic young collections: see gcpolicy.py
            gc.collect()
            gc.freeze()
            self._start_workers()
            parts.push_async_callback(self._stop_workers)
            # unwound first: records and the outbox are written while the workers run
            parts.push_async_callback(self._flush_records)
            self._parts = parts.pop_all()
        log.info(
            "app.started",
            sip=[f"{x.transport}:{x.host}:{x.port}" for x in self.stack.listening],
            http=f"{self.settings.http.host}:{self.http_port}",
            store=self.settings.store.url.split("@")[-1],
            trackers=len(self.settings.trackers),
            sip_core=sip.NATIVE,
            call_engine=b2bua.NATIVE,
            node=self.node_id,
        )
        self.systemd.notify("READY=1", "STATUS=accepting calls")

    async def _start_sip(self) -> None:
        try:
            await self.stack.start([Listen(x.transport, x.host, x.port)
                                    for x in self.settings.sip.listen])
        except BaseException:
            await self.stack.close()  # the listeners opened before the one that failed
            raise
        self._sip_up = True

    async def _close_sip(self) -> None:
        await self.stack.close()
        self._sip_up = False

    async def _start_http(self) -> web.AppRunner:
        http = self._http_app()
        # keepalive_timeout closes a connection that has not sent a whole request (line
        # and headers) within http.header_timeout of connecting or of its last answer:
        # the slow-loris guard; bodies are timed by the API's body_guard
        runner = web.AppRunner(http, access_log=None, handle_signals=False,
                               keepalive_timeout=self.settings.http.header_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.http.host, self.settings.http.port,
                               reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.http_runner = runner
        addresses = runner.addresses  # (host, port[, flow, scope]) per listening socket
        self.http_port = int(addresses[0][1]) if addresses else self.settings.http.port
        return runner

    def _http_app(self) -> web.Application:
        """The HTTP API with the services its handlers read (http/keys.py)."""
        http = api.build_http_app(self.settings.http.body_timeout)
        http[keys.SETTINGS] = lambda: self.settings
        http[keys.STORE] = self.store
        http[keys.TRACKING] = self.tracking
        http[keys.METRICS] = self.metrics
        http[keys.RECORDINGS] = self.media.recordings
        http[keys.HEALTH] = self
        http[keys.SCRAPE] = self.scrape
        http[keys.NOTIFY_OUTBOX] = self.webhooks.notify
        http[keys.SHED] = self.engine.shed_counts
        http[keys.CLOCK] = self.clock
        for module in (api, reports_api, tracking_api, recordings_api, auth_api, dashboard):
            module.setup(http)
        return http

    async def _close_store(self) -> None:
        if self._probe is not None and not self._probe.done():
            await asyncio.wait({self._probe}, timeout=PROBE_TIMEOUT)  # the last heartbeat
        await self.store.close()

    def _start_workers(self) -> None:
        stop = self._workers_stop
        workers = {
            "webhooks": self.webhooks.run, "records": self.tracking.run_flusher,
            "watchdog": self.systemd.run_watchdog, "media": self.media.run,
            "media-watch": self.engine.watch_media,
            "store-probe": self._probe_loop, "gc": self.gc_policy.run,
            "target-health": self.prober.run, "delay-models": self.tracking.run_rebuild,
        }

        async def supervise() -> None:
            # one worker failing cancels the others (and is reported by _workers_ended)
            async with asyncio.TaskGroup() as group:
                for name, run in workers.items():
                    group.create_task(run(stop), name=f"calltrackd-{name}")

        self._workers = asyncio.get_running_loop().create_task(supervise(),
                                                                name="calltrackd-workers")
        self._workers.add_done_callback(self._workers_ended)

    def _workers_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.failed = True
        log.error("app.worker_failed", error=repr(exc)[:500], exc_info=exc)
        self.shutdown.set()  # drain and exit 1: the service manager starts us again

    async def _stop_workers(self) -> None:
        self._workers_stop.set()
        task = self._workers
        if task is None:
            return
        _, late = await asyncio.wait({task}, timeout=WORKER_GRACE)
        if late:
            log.warning("app.workers_cancelled", grace=WORKER_GRACE)
            task.cancel()  # the TaskGroup cancels every worker and waits for them
            await asyncio.wait({task})
        self._workers = None

    async def _flush_records(self) -> None:
        await self.recorder.drain(within=5.0)
        await self.tracking.flush(timeout=5.0)

    def _recording_stored(self, call: CallInfo, rec: RecordingInfo | None) -> None:
        recording = recordings_api.recording_object(rec)
        if recording is not None:
            self.recorder.call_recording(call, recording)

    def _call_finished(self) -> None:
        if not self.engine.active_calls:
            self._idle.set()

    async def drain_and_stop(self) -> None:
        grace = self.settings.sip.shutdown_grace
        self.engine.draining = True
        self.systemd.notify("STOPPING=1", f"STATUS=draining {self.engine.active_calls} calls")
        log.info("app.draining", active_calls=self.engine.active_calls, grace=grace)
        self._idle.clear()
        if self.engine.active_calls:  # no await since the clear: no call can end unseen
            await _first_of(self._idle, self.force, within=grace)
        self.engine.terminate_all()
        await asyncio.sleep(0.1)  # let the last BYEs and 503s leave
        await self.stop()

    async def stop(self) -> None:
        """Stop what `start` started, in reverse; a no-op when nothing runs."""
        parts, self._parts = self._parts, None
        if parts is not None:
            await parts.aclose()
            log.info("app.stopped")

    # -- health and gauges -------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, str]]:
        """From the state the loops keep (no store round trip per request): the store
        check is the write probe's latest verdict."""
        checks = {"sip": "ok" if self._sip_up else "not listening", "http": "ok",
                  "store": "ok" if self.store_error is None
                  else f"unavailable: {self.store_error}"[:200]}
        ok = all(v == "ok" for v in checks.values())
        checks.update(await self.media.health())  # reported, not fatal: calls go direct
        return ok, checks

    # -- the store write probe: heartbeat, health, crash recovery -----------------------

    async def _probe_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_INTERVAL)
            if not stop.is_set():
                await self.probe_store()
                flush_suppressed()  # the counts of rate-limited warnings

    async def probe_store(self) -> None:
        """Write this node's heartbeat (a write, so a full disk, a read-only or frozen
        file, or a Redis that refuses writes all show), then close what a crash left open
        once. One log line when the store goes down, one when it is back."""
        try:
            if self._recovery_pending and self._prior_heartbeat is None:
                self._prior_heartbeat = await asyncio.wait_for(self.store.last_heartbeat(),
                                                               PROBE_TIMEOUT)
            # one write at a time: a frozen file must not pile probes up in the writer
            if self._probe is None or self._probe.done():
                self._probe = asyncio.ensure_future(self.store.heartbeat(self.clock()))
            done, _ = await asyncio.wait({self._probe}, timeout=PROBE_TIMEOUT)
            if not done:
                raise TimeoutError(f"a write took more than {PROBE_TIMEOUT:g} s")
            self._probe.result()
        except Exception as exc:
            self._store_verdict(f"{type(exc).__name__}: {exc}")
            return
        self._store_verdict(None)
        if self._recovery_pending:
            try:
                # bounded: a record not written in time waits in tracking's queue
                await asyncio.wait_for(
                    self.recorder.close_crashed(self.boot, self._prior_heartbeat), 10.0)
                self._recovery_pending = False
            except Exception as exc:
                log.warning("app.crash_recovery_failed", error=repr(exc), will_retry=True)

    def _store_verdict(self, error: str | None) -> None:
        was = self.store_error
        self.store_error = error
        self.metrics.store_up.set(1 if error is None else 0)
        now = self.clock()
        if error is not None and (was is None or was == "not probed yet"):
            self._store_down_since = now
            log.error("store.down", error=error[:200])  # records wait in memory
        elif error is None and self._store_down_since is not None:
            log.warning("store.back", down_seconds=round(now - self._store_down_since, 1),
                        records_waiting=self.tracking.pending_records)
            self._store_down_since = None

    @property
    def draining(self) -> bool:
        return self.engine.draining

    async def scrape(self) -> bytes:
        """The Prometheus exposition, gauges refreshed first."""
        await self.refresh_gauges()
        return self.metrics.render()

    async def refresh_gauges(self) -> None:
        """What takes a store round trip; the rest is read at scrape time (see __init__)."""
        m = self.metrics
        with contextlib.suppress(Exception):
            m.webhook_queue.set(await asyncio.wait_for(self.store.pending_count(), 1.0))
        with contextlib.suppress(Exception):
            await self.tracking.export_gauges(m)

    def _webhook_secret(self, tracker_id: str, url: str) -> str | None:
        for tracker in self.settings.trackers:
            if tracker.id == tracker_id:
                for hook in tracker.webhooks:
                    if hook.url == url:
                        return hook.secret
        return None

    def _webhook_result(self, result: str) -> None:
        self.metrics.webhook_deliveries.labels(result).inc()

    def _connection_users(self) -> Iterator[Address]:
        """Where calls and dialogs send: the callers' connections and the legs' peers."""
        for call in self.engine.calls.values():
            yield call.source
        for _, leg in self.engine.dialogs.values():
            if leg.dest is not None:
                yield leg.dest

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: new trackers, pools, targets and webhooks; running calls keep theirs.
        Listeners, store and HTTP address need a restart."""
        self.systemd.notify("RELOADING=1")
        try:
            new = load_config(self.settings.source)
        except ConfigError as exc:
            log.error("config.reload_refused", problems=exc.problems)  # the old one runs on
        else:
            changed = config_changes(self.settings, new)
            restart = [k for k in changed if k in RESTART_KEYS]
            self.settings = new
            self.tracking.update_trackers(new.trackers)
            self.strangers.configure(StrangerSettings.of(new.sip))
            self.stack.conns.limits = ConnectionLimits.of(new.sip)
            try:  # the files again, changed or not: the next TLS connection uses them
                assert self.stack.tls is not None
                self.stack.tls.load(new.sip.tls)
            except (OSError, ssl.SSLError) as exc:
                log.error("config.tls_reload_refused", error=str(exc),
                          note="the running certificate and CAs are kept")
            log.info("config.reloaded", trackers=len(new.trackers),
                     changed=changed, applied=[k for k in changed if k not in RESTART_KEYS],
                     needs_restart=restart)
            if restart:
                log.warning("config.needs_restart", needs_restart=restart)
        self.systemd.notify("READY=1")


_sip_log = structlog.get_logger("calltrackd.sip.trace")


def _sip_trace(direction: str, data: bytes) -> None:
    """Every SIP message, at debug level only (far too costly for production rates)."""
    _sip_log.debug("sip." + direction, message=data.decode("utf-8", "replace"))


async def _first_of(a: asyncio.Event, b: asyncio.Event, within: float) -> None:
    """Wait until either event is set, at most `within` seconds."""
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.wait(waits)


async def serve(settings: Settings, shutdown: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `shutdown`): 0 after a clean drain, 1 when the start
    failed or a worker crashed."""
    app = App(settings, shutdown)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if app.shutdown.is_set():
            app.force.set()
        app.shutdown.set()

    installed: list[signal.Signals] = []
    try:
        for sig, handler in ((signal.SIGTERM, on_signal), (signal.SIGINT, on_signal),
                             (signal.SIGHUP, app.reload)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        try:
            await app.start()
        except StartError as exc:
            log.error("app.start_failed", step=exc.step, error=str(exc.__cause__)[:500])
            return 1
        await app.shutdown.wait()
        await app.drain_and_stop()
        return 1 if app.failed else 0
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)  # back to the default disposition


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
