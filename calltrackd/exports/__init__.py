"""Exports through the durable outbox: analytics (GA4, Yandex Metrica) and missed-call
alerts (Telegram, Slack), beside the webhooks.

`OutboxRows.rows(event, record, tracker)` makes every outbox row a CDR change causes (the
webhooks' and, for `call.ended`, the exports'); the caller commits them with the CDR.
`OutboxDestinations` tells the worker, at send time and from the current configuration,
where a row goes (`Destination`); a row whose destination is gone resolves to None.

What is not sent is counted, by kind and reason, through `on_skip(kind, reason)`: calls
without the analytics client id (no row is made), and rows older than the service accepts
when they are due (GA4: 72 hours; Metrica: 21 days; the worker marks them failed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from calltrackd.tracking.model import (
    AlertExport,
    CallRecord,
    Ga4Export,
    MetricaExport,
    Tracker,
    WebhookDelivery,
)
from calltrackd.webhooks.destinations import Destination, WebhookDestination
from calltrackd.webhooks.payload import build_deliveries, new_delivery_id, new_event_id

from . import alerts, ga4, metrica
from .settings import alert_name

__all__ = ["OutboxDestinations", "OutboxRows", "alert_name", "export_rows"]


def _row(kind: str, ref: str, record: CallRecord, event_id: str, body: bytes, now: float,
         due: float | None = None) -> WebhookDelivery:
    return WebhookDelivery(
        id=new_delivery_id(), event_id=event_id, event="call.ended", tracker=record.tracker,
        url=ref, body=body, created_at=now, next_attempt_at=now if due is None else due,
        kind=kind)


def export_rows(
    record: CallRecord,
    tracker: Tracker,
    now: float,
    public_url: str | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[WebhookDelivery]:
    """The analytics and alert rows of an ended call (pure but for the ids)."""
    out: list[WebhookDelivery] = []
    event_id = new_event_id()

    def skipped(kind: str, reason: str) -> None:
        if on_skip is not None:
            on_skip(kind, reason)

    for export in getattr(tracker, "analytics", ()):
        if isinstance(export, Ga4Export):
            body = ga4.ga4_body(record, export)
            if isinstance(body, str):
                skipped("ga4", body)
            else:
                out.append(_row("ga4", export.ref, record, event_id, body, now))
        elif isinstance(export, MetricaExport):
            mbody = metrica.metrica_row(record, public_url)
            if isinstance(mbody, str):
                skipped("metrica", mbody)
            else:
                out.append(_row("metrica", export.ref, record, event_id, mbody, now,
                                metrica.due_at(now, export.upload_interval)))
    alert_list: Sequence[AlertExport] = getattr(tracker, "alerts", ())
    if alert_list:
        timezone = getattr(tracker, "timezone", None)
        text = None
        for alert in alert_list:
            if not alerts.is_missed(record, alert):
                continue
            text = text or alerts.alert_text(record, timezone, public_url)
            out.append(_row(alert.kind, alert.ref, record, event_id,
                            alerts.alert_body(alert, text), now))
    return out


class OutboxRows:
    """The rows of one CDR change, for the recorder (reads the settings of the moment)."""

    def __init__(self, public_url: Callable[[], str | None],
                 on_skip: Callable[[str, str], None] | None = None) -> None:
        self._public_url = public_url
        self._on_skip = on_skip

    def rows(self, event: str, record: CallRecord, tracker: Tracker,
             now: float) -> list[WebhookDelivery]:
        out = build_deliveries(event, record, tracker.webhooks, now)
        if event == "call.ended" and record.outcome is not None:
            out += export_rows(record, tracker, now, self._public_url(), self._on_skip)
        return out


class OutboxDestinations:
    """Row → Destination from the configuration of the moment (rebuilt after a reload)."""

    def __init__(self, trackers: Callable[[], Sequence[Tracker]]) -> None:
        self._trackers = trackers
        self._built_for: Any = None
        self._table: dict[tuple[str, str, str], Destination] = {}

    def _build(self, trackers: Sequence[Tracker]) -> None:
        table: dict[tuple[str, str, str], Destination] = {}
        for t in trackers:
            for hook in t.webhooks:
                table.setdefault((t.id, "webhook", hook.url),
                                 WebhookDestination(hook.url, hook.secret,
                                                    batch=getattr(hook, "batch", 1)))
            for export in getattr(t, "analytics", ()):
                if isinstance(export, Ga4Export):
                    table.setdefault((t.id, "ga4", export.ref), ga4.Ga4Destination(export))
                elif isinstance(export, MetricaExport):
                    table.setdefault((t.id, "metrica", export.ref),
                                     metrica.MetricaDestination(export))
            for alert in getattr(t, "alerts", ()):
                table.setdefault((t.id, alert.kind, alert.ref), alerts.AlertDestination(alert))
        self._table = table

    def __call__(self, row: WebhookDelivery) -> Destination | None:
        trackers = self._trackers()
        if trackers is not self._built_for:
            self._build(trackers)
            self._built_for = trackers
        return self._table.get((row.tracker, row.kind, row.url))
