"""Prometheus metrics. Names are stable; labels may grow.

One registry per daemon (not the global default), so tests can start several apps in
one process and the exposition carries only calltrackd's own series plus process metrics.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__
from .overload import LAG_BUCKETS, LoopLagMonitor

__all__ = ["CONTENT_TYPE_LATEST", "WEBHOOK_RESULTS", "CounterOf", "DictCounter", "Metrics"]

# INVITE handling is sub-millisecond when healthy; the tail shows queueing.
_SIP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        # python_gc_objects_collected_total: cyclic garbage found, which should stay ~0
        GCCollector(registry=r)
        self.calls = Counter("calltrackd_calls", "Calls that reached routing, by outcome",
                             ["tracker", "outcome"], registry=r)
        # read from the engine's count at scrape time (`count_active_calls`), never counted
        self.active_calls = Gauge("calltrackd_active_calls", "Calls in progress", registry=r)
        # counted in a plain dict (sip_tap runs for every datagram, a labelled Counter
        # takes a lock per inc) and exposed by a collector at scrape time
        self.sip_counts: dict[tuple[str, str], int] = {}
        r.register(_SipMessages(self.sip_counts))
        # action (rate_limited, dropped, rejected, answered) → count, kept by the stack's
        # StrangerGate in a plain dict for the same reason
        self.stranger_counts: dict[str, int] = {}
        r.register(_StrangerPackets(self.stranger_counts))
        self.invite_seconds = Histogram(
            "calltrackd_invite_seconds", "Time from INVITE received to INVITE forwarded",
            buckets=_SIP_BUCKETS, registry=r)
        self.pool_numbers = Gauge("calltrackd_pool_numbers", "Pool numbers by state",
                                  ["tracker", "pool", "state"], registry=r)
        self.reservations = Counter("calltrackd_reservations", "Numbers handed to visitors",
                                    ["tracker", "kind"], registry=r)
        self.coverage = Gauge("calltrackd_coverage_ratio",
                              "Visitors that got a dynamic number / all visitors, last hour",
                              ["tracker"], registry=r)
        self.webhook_deliveries = Counter("calltrackd_webhook_deliveries",
                                          "Webhook delivery attempts by result", ["result"],
                                          registry=r)
        for result in WEBHOOK_RESULTS:  # series exist at 0 before the first delivery
            self.webhook_deliveries.labels(result)
        self.webhook_queue = Gauge("calltrackd_webhook_queue", "Undelivered webhook events",
                                   registry=r)
        # the outbox by kind (webhook, ga4, metrica, telegram, slack)
        self.outbox_deliveries = Counter("calltrackd_outbox_deliveries",
                                         "Outbox rows by kind and attempt result",
                                         ["kind", "result"], registry=r)
        self.outbox_skipped = Counter("calltrackd_outbox_skipped",
                                      "Calls not exported, by kind and reason (no analytics "
                                      "client id, older than the service accepts)",
                                      ["kind", "reason"], registry=r)
        # counted by their owners (the transaction layer, the engine) and read at scrape
        # time: set `.count` to the owner's number
        self.sip_retransmissions = CounterOf("calltrackd_sip_retransmissions",
                                             "SIP retransmissions sent by our transactions", r)
        self.overload_rejects = CounterOf("calltrackd_overload_rejected",
                                          "INVITEs answered 503 because of load or drain", r)
        self.sip_queue_delay = Gauge("calltrackd_sip_queue_delay_seconds",
                                     "Time a datagram waits in the SIP UDP receive queue "
                                     "(the load shedder's signal)", registry=r)
        self.loop_lag = Gauge("calltrackd_loop_lag_seconds",
                              "How late the event loop runs its timers (smoothed)", registry=r)
        self.loop_lag_max = Gauge("calltrackd_loop_lag_max_seconds",
                                  "The longest the event loop ran one timer late in the last "
                                  "minute (a stall)", registry=r)
        self.store_up = Gauge("calltrackd_store_up",
                              "1 when the store takes writes (probed every second)", registry=r)
        self.cdr_backlog = Gauge("calltrackd_cdr_backlog",
                                 "Call records waiting for the store", registry=r)
        # media through rtpengine (calltrackd/media/)
        self.media_anchored = Counter("calltrackd_media_anchored_calls",
                                      "Calls whose media went through rtpengine",
                                      ["tracker"], registry=r)
        self.recordings = Counter("calltrackd_recordings",
                                  "Call recordings stored, by result (wav, pcap, failed)",
                                  ["result"], registry=r)
        for result in ("wav", "pcap", "failed"):
            self.recordings.labels(result)
        self.rtpengine_errors = Counter("calltrackd_rtpengine_errors",
                                        "rtpengine ng commands that failed, by kind",
                                        ["instance", "command", "kind"], registry=r)
        self.rtpengine_up = Gauge("calltrackd_rtpengine_up",
                                  "1 while the rtpengine instance answers", ["instance"],
                                  registry=r)
        self.target_up = Gauge("calltrackd_target_up",
                               "1 while a forward target answers its OPTIONS probes, 0 when down",
                               ["tracker", "target"], registry=r)
        self.build_info = Gauge("calltrackd_build_info", "Always 1: the build that runs",
                                ["version", "python", "sip_core"], registry=r)

    def count_active_calls(self, count: Callable[[], int]) -> None:
        """`calltrackd_active_calls` is `count()` at each scrape (the engine's calls)."""
        self.active_calls.set_function(count)

    def watch_loop(self, monitor: LoopLagMonitor) -> None:
        """The loop-lag figures, read from `monitor` at each scrape: the smoothed lag, the
        longest tick lag of the last minute, the histogram of every tick's lag."""
        self.loop_lag.set_function(lambda: monitor.lag)
        self.loop_lag_max.set_function(monitor.max_lag)
        self.registry.register(_LoopLagHistogram(monitor))

    def set_build_info(self, sip_core: str) -> None:
        """`sip_core`: "compiled" or "pure python" (the reason stays in the start-up log)."""
        self.build_info.labels(__version__, platform.python_version(),
                               "compiled" if sip_core == "compiled" else "pure python").set(1)

    def outbox_outcome(self, kind: str, result: str) -> None:
        self.outbox_deliveries.labels(kind, result).inc()

    def outbox_skip(self, kind: str, reason: str) -> None:
        self.outbox_skipped.labels(kind, reason).inc()

    def sip_tap(self, direction: str, data: bytes) -> None:
        """Counts a SIP message by method or status class without parsing it."""
        head = data[:9]
        kind = _KINDS.get(head)
        if kind is None:
            kind = _kind(head)
            if len(_KINDS) < 1024:  # bounded: the bytes come from the network
                _KINDS[head] = kind
        key = (direction, kind)
        counts = self.sip_counts
        counts[key] = counts.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


_KINDS: dict[bytes, str] = {}


def _kind(head: bytes) -> str:
    if head.startswith(b"SIP/2.0 "):
        cls = head[8:9]
        return f"{cls.decode()}xx" if cls in _STATUS_CLASSES else "other"
    sp = head.find(b" ")
    kind = head[:sp].decode("ascii", "replace") if sp > 0 else "other"
    return kind if kind in _KNOWN_METHODS else "other"


class _SipMessages:
    """calltrackd_sip_messages_total from `Metrics.sip_counts`."""

    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("calltrackd_sip_messages", "SIP messages",
                                     labels=["direction", "kind"])
        for (direction, kind), value in list(self.counts.items()):
            family.add_metric([direction, kind], value)
        yield family


class _StrangerPackets:
    """calltrackd_sip_stranger_packets_total from `Metrics.stranger_counts`."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "calltrackd_sip_stranger_packets",
            "SIP packets from sources that are no carrier, trusted source or peer, by what "
            "was done with them", labels=["action"])
        for action, value in list(self.counts.items()):
            family.add_metric([action], value)
        yield family


class _LoopLagHistogram:
    """calltrackd_loop_tick_lag_seconds from a LoopLagMonitor's per-bucket counts."""

    def __init__(self, monitor: LoopLagMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts = list(self.monitor.lag_counts)
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*LAG_BUCKETS, float("inf")], counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "calltrackd_loop_tick_lag_seconds",
            "How late each tick of the loop monitor ran (one is due every 10 ms), unsmoothed",
            buckets=buckets, sum_value=self.monitor.lag_sum)


WEBHOOK_RESULTS = ("ok", "retry", "failed")
_STATUS_CLASSES = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "PRACK", "REGISTER",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})


class CounterOf:
    """A counter without labels read at scrape time from `count()`, a number its owner
    keeps and only ever raises (no delta bookkeeping between scrapes)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.count: Callable[[], float] = lambda: 0
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.count())


class DictCounter:
    """A counter family read at scrape time from a dict its owner keeps (label values →
    count): counting on the packet path costs a dict update, not a labelled Counter's lock.
    Register it with `registry.register(...)`."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 counts: dict[tuple[str, ...], int] | dict[tuple[str, str], int]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in list(self.counts.items()):
            family.add_metric(list(values), value)
        yield family
