"""Builds and wires the parts, owns start/stop, signals and the drain.

start: store → tracking → SIP (transaction layer, sockets, engine) → HTTP → workers.
stop (SIGTERM/SIGINT): refuse new INVITEs with 503 + Retry-After, let running calls finish
within `sip.shutdown_grace`, end the rest, flush call records and the webhook outbox,
close in reverse order. A second signal ends the wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from typing import Any

import structlog
from aiohttp import web

from . import sip
from .b2bua.engine import Engine
from .config import ConfigError, Settings, load_config
from .exports import OutboxDestinations, OutboxRows
from .gcpolicy import CollectorPolicy
from .http import recordings as recordings_api
from .http import tracking as tracking_api
from .http.api import build_http_app
from .media.service import Media
from .metrics import Metrics
from .overload import LoopLagMonitor
from .recorder import Recorder
from .sdnotify import Notifier
from .sip.endpoint import TransactionLayer
from .sip.transaction import TimerConfig
from .store import create_store
from .tracking.service import TrackingService
from .transport.stack import Listen, SipStack
from .transport.strangers import StrangerGate, StrangerSettings
from .webhooks.backoff import ExponentialJitterBackoff
from .webhooks.worker import WebhookWorker

log = structlog.get_logger("calltrackd")


class App:
    def __init__(self, settings: Settings, shutdown: asyncio.Event | None = None) -> None:
        self.settings = settings
        self.shutdown = shutdown or asyncio.Event()
        self.force = asyncio.Event()
        self.metrics = Metrics()
        self.store = create_store(settings.store.url)
        self.tracking = TrackingService(self.store, settings.trackers)
        self.media = Media(settings.media, self.metrics)  # rtpengine client, recordings
        layer = TransactionLayer(
            TimerConfig(settings.sip.t1, settings.sip.t2, settings.sip.t4),
            settings.sip.max_message_size,
        )
        self.stack = SipStack(layer, advertise=settings.sip.advertise)
        self.stack.taps.append(self.metrics.sip_tap)
        if settings.log.level == "debug":
            self.stack.taps.append(_sip_trace)
        wh = settings.webhooks
        self.webhooks = WebhookWorker(
            self.store, self._webhook_secret, on_result=self._webhook_result,
            per_endpoint_concurrency=wh.concurrency, initial_concurrency=wh.initial_concurrency,
            timeout=wh.timeout, max_age=wh.max_age,
            backoff=ExponentialJitterBackoff(base=wh.backoff_base, cap=wh.backoff_cap),
            resolve=OutboxDestinations(lambda: self.settings.trackers),
            on_outcome=self.metrics.outbox_outcome, on_skip=self.metrics.outbox_skip)
        outbox = OutboxRows(lambda: self.settings.http.public_url, self.metrics.outbox_skip)
        self.recorder = Recorder(self.tracking, self.metrics, self.webhooks.notify,
                                 outbox.rows)
        self.engine = Engine(self.stack, lambda: self.settings, self.recorder)
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
        self.http_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._workers_stop = asyncio.Event()
        self._sip_up = False
        self._retrans_seen = 0
        self._rejects_seen = 0
        self.systemd = Notifier()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        await self.tracking.start()
        await self.stack.start([Listen(x.transport, x.host, x.port)
                                for x in self.settings.sip.listen])
        self._sip_up = True
        self.load.probes = self.stack.queue_probes
        self.load.start()
        http = build_http_app(self)
        tracking_api.setup(http)
        recordings_api.setup(http)
        self.http_runner = web.AppRunner(http, access_log=None, handle_signals=False)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, self.settings.http.host, self.settings.http.port,
                           reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.http_port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.webhooks.run(self._workers_stop)))
        self._tasks.append(loop.create_task(self.tracking.run_flusher(self._workers_stop)))
        self._tasks.append(loop.create_task(self.systemd.run_watchdog(self._workers_stop)))
        self._tasks.append(loop.create_task(self.media.run(self._workers_stop)))
        log.info(
            "calltrackd started",
            sip=[f"{x.transport}:{x.host}:{x.port}" for x in self.stack.listening],
            http=f"{self.settings.http.host}:{self.http_port}",
            store=self.settings.store.url.split("@")[-1],
            trackers=len(self.settings.trackers),
            sip_core=sip.NATIVE,
        )
        # Long-lived objects (config, modules) leave the collector's view for good.
        gc.collect()
        gc.freeze()
        # then no automatic collections: see gcpolicy.py
        self._tasks.append(loop.create_task(self.gc_policy.run(self._workers_stop)))
        self.systemd.notify("READY=1", "STATUS=accepting calls")

    async def drain_and_stop(self) -> None:
        grace = self.settings.sip.shutdown_grace
        self.engine.draining = True
        self.systemd.notify("STOPPING=1", f"STATUS=draining {self.engine.active_calls} calls")
        log.info("draining", active_calls=self.engine.active_calls, grace=grace)
        deadline = time.monotonic() + grace
        while self.engine.active_calls and time.monotonic() < deadline and not self.force.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.force.wait(), 0.2)
        for call in list(self.engine.calls.values()):
            call.terminate()
        await asyncio.sleep(0.1)  # let the last BYEs and 503s leave
        await self.stop()

    async def stop(self) -> None:
        await self.recorder.drain(within=5.0)
        await self.tracking.flush(timeout=5.0)
        self._workers_stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10.0)
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        self.load.stop()
        self.media.close()
        await self.stack.close()
        self._sip_up = False
        await self.store.close()
        self.systemd.close()
        log.info("calltrackd stopped")

    # -- health and gauges -------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, str]]:
        checks = {"sip": "ok" if self._sip_up else "not listening", "http": "ok"}
        try:
            await asyncio.wait_for(self.store.ping(), 1.0)
            checks["store"] = "ok"
            self.metrics.store_up.set(1)
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
            self.metrics.store_up.set(0)
        ok = all(v == "ok" for v in checks.values())
        checks.update(await self.media.health())  # reported, not fatal: calls go direct
        return ok, checks

    async def refresh_gauges(self) -> None:
        m = self.metrics
        await self.health()  # sets calltrackd_store_up: scrapers need not call /healthz
        m.active_calls.set(self.engine.active_calls)
        m.overload_rejects.inc(self.engine.rejected_overload - self._rejects_seen)
        self._rejects_seen = self.engine.rejected_overload
        m.sip_queue_delay.set(self.load.queue_delay)
        m.loop_lag.set(self.load.lag)
        retrans = self.stack.layer.retransmissions
        m.sip_retransmissions.inc(retrans - self._retrans_seen)
        self._retrans_seen = retrans
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

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: new trackers, pools, targets and webhooks; running calls keep theirs.
        Listeners, store and HTTP address need a restart."""
        self.systemd.notify("RELOADING=1")
        try:
            new = load_config(self.settings.source)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration",
                      problems=exc.problems)
        else:
            self.settings = new
            self.tracking.update_trackers(new.trackers)
            self.strangers.configure(StrangerSettings.of(new.sip))
            log.info("configuration reloaded", trackers=len(new.trackers))
        self.systemd.notify("READY=1")


_sip_log = structlog.get_logger("calltrackd.sip.trace")


def _sip_trace(direction: str, data: bytes) -> None:
    """Every SIP message, at debug level only (far too costly for production rates)."""
    _sip_log.debug("sip " + direction, message=data.decode("utf-8", "replace"))


async def serve(settings: Settings, shutdown: asyncio.Event | None = None) -> int:
    app = App(settings, shutdown)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if app.shutdown.is_set():
            app.force.set()
        app.shutdown.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, app.reload)
    try:
        await app.start()
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        with contextlib.suppress(Exception):
            await app.stop()
        return 1
    await app.shutdown.wait()
    await app.drain_and_stop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
