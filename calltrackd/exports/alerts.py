"""Missed-call alerts: a short message per missed call to a Telegram chat or a Slack
(compatible) incoming webhook, through the outbox like every other delivery.

    Missed call (busy) from +79161234567 to +74990000001
    channel: billboard · 2026-11-22 13:02:05 MSK · rang 4 s
    https://track.example.net/ui/#/calls/c_...

Telegram: `POST {base_url}/bot<token>/sendMessage` with JSON `{"chat_id", "text",
"disable_web_page_preview"}`; acknowledged when it answers 200 with `"ok": true`.
Slack: `POST <incoming webhook url>` with JSON `{"text"}`; acknowledged on 2xx.
The message is plain text (no parse mode, so nothing a caller id holds can break it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calltrackd.tracking.model import AlertExport, CallRecord, WebhookDelivery
from calltrackd.webhooks.destinations import USER_AGENT, Prepared, Request, http_error

from .common import call_link, channel_of, source_of, started_ts, utc

__all__ = ["AlertDestination", "alert_body", "alert_text", "is_missed"]

MAX_TEXT: Final = 4096  # Telegram's limit for a message
_OUTCOME_WORDS: Final = {"busy": "busy", "no_answer": "no answer", "cancelled": "caller hung up",
                         "failed": "failed"}


def is_missed(record: CallRecord, alert: AlertExport) -> bool:
    return record.outcome is not None and record.outcome in alert.outcomes


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def alert_text(record: CallRecord, timezone: str | None, public_url: str | None) -> str:
    started = utc(started_ts(record))
    zone = _zone(timezone)
    local: datetime = started.astimezone(zone) if zone else started
    when = local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "UTC")
    what = _OUTCOME_WORDS.get(record.outcome or "failed", record.outcome or "failed")
    caller = record.caller if record.caller and record.caller != "anonymous" else "anonymous"
    lines = [f"Missed call ({what}) from {caller} to {record.did}"]
    details = []
    channel = channel_of(record) or source_of(record)
    if channel:
        details.append(f"channel: {channel}")
    details.append(when)
    if record.ring_seconds:
        details.append(f"rang {round(record.ring_seconds)} s")
    lines.append(" · ".join(details))
    link = call_link(public_url, record.id)
    if link:
        lines.append(link)
    return "\n".join(lines)[:MAX_TEXT]


def alert_body(alert: AlertExport, text: str) -> bytes:
    doc: dict[str, object]
    if alert.kind == "telegram":
        doc = {"chat_id": alert.chat_id, "text": text, "disable_web_page_preview": True}
    else:
        doc = {"text": text}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class AlertDestination:
    alert: AlertExport
    batch: int = 1
    concurrency: int | None = 1  # messages in the order of the calls

    @property
    def kind(self) -> str:
        return self.alert.kind

    @property
    def key(self) -> str:
        return self.alert.ref

    def prepare(self, rows: Sequence[WebhookDelivery], now: float) -> Prepared:
        row = rows[0]
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.alert.kind == "telegram":
            url = f"{self.alert.base_url.rstrip('/')}/bot{self.alert.bot_token}/sendMessage"
            secret = self.alert.bot_token
            # the chat may have changed since the row was written: send to today's
            body = alert_body(self.alert, json.loads(row.body).get("text", ""))
        else:
            url, secret, body = self.alert.url, self.alert.url, row.body
        return Prepared(Request(url, body, headers, secrets=(secret,)), [row])

    def retry_after(self, body: bytes) -> float | None:
        """Telegram says how long to wait in the body of a 429 (`parameters.retry_after`)."""
        try:
            value = json.loads(body)["parameters"]["retry_after"]
        except (ValueError, KeyError, TypeError):
            return None
        return float(value) if isinstance(value, int | float) and value >= 0 else None

    def accepted(self, status: int, body: bytes) -> str | None:
        if not 200 <= status < 300:
            if self.alert.kind == "telegram":
                try:
                    description = json.loads(body).get("description")
                except (ValueError, AttributeError):
                    description = None
                if description:
                    return f"HTTP {status}: {description}"
            return http_error(status, body)
        if self.alert.kind == "telegram":
            try:
                ok = json.loads(body).get("ok") is True
            except (ValueError, AttributeError):
                ok = False
            return None if ok else f"HTTP {status} without \"ok\": true"
        return None
