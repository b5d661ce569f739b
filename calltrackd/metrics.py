"""Prometheus metrics (SPEC §7). Names are stable; labels may grow.

One registry per daemon (not the global default), so tests can start several apps in
one process and the exposition carries only calltrackd's own series plus process metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "WEBHOOK_RESULTS", "Metrics"]

# INVITE handling is sub-millisecond when healthy; the tail shows queueing.
_SIP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.calls = Counter("calltrackd_calls", "Calls that reached routing, by outcome",
                             ["tracker", "outcome"], registry=r)
        self.active_calls = Gauge("calltrackd_active_calls", "Calls in progress", registry=r)
        self.sip_messages = Counter("calltrackd_sip_messages", "SIP messages",
                                    ["direction", "kind"], registry=r)
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
        self.sip_retransmissions = Counter("calltrackd_sip_retransmissions",
                                           "SIP retransmissions sent by our transactions",
                                           registry=r)
        self.overload_rejects = Counter("calltrackd_overload_rejected",
                                        "INVITEs answered 503 because of load or drain",
                                        registry=r)
        self.store_up = Gauge("calltrackd_store_up", "1 when the store answers", registry=r)
        self.cdr_backlog = Gauge("calltrackd_cdr_backlog",
                                 "Call records waiting for the store", registry=r)
        # labels() takes a lock and builds a tuple; sip_tap runs for every datagram
        self._sip_children: dict[tuple[str, str], Any] = {}

    def sip_tap(self, direction: str, data: bytes) -> None:
        """Counts a SIP message by method or status class without parsing it."""
        head = data[:12]
        if head.startswith(b"SIP/2.0 "):
            cls = head[8:9]
            kind = f"{cls.decode()}xx" if cls in _STATUS_CLASSES else "other"
        else:
            sp = head.find(b" ")
            kind = head[:sp].decode("ascii", "replace") if sp > 0 else "other"
            if kind not in _KNOWN_METHODS:
                kind = "other"
        key = (direction, kind)
        child = self._sip_children.get(key)
        if child is None:
            child = self._sip_children[key] = self.sip_messages.labels(direction, kind)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


WEBHOOK_RESULTS = ("ok", "retry", "failed")
_STATUS_CLASSES = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "PRACK", "REGISTER",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})
