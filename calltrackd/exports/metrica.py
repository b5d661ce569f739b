"""Yandex Metrica offline call conversions: calls uploaded in batches as `upload_calls` CSV.

    POST {base_url}/management/v1/counter/{counter_id}/offline_conversions/upload_calls
         ?client_id_type=CLIENT_ID&comment=calltrackd
    Authorization: OAuth <token>
    Content-Type: multipart/form-data; boundary=...   (one part, name="file": the CSV)

    ClientId,DateTime,PhoneNumber,TalkDuration,HoldDuration,CallMissed,Tag,FirstTimeCaller,URL,CallTrackerURL,StaticCall
    1690000000123,1795392125,+74990000001,63,4,0,qualified,1,https://acme.example/sofas,,0

Each ended call with a Metrica client id (the visitor's `_ym_uid`) becomes one outbox row
holding its CSV values; rows become due at the next multiple of `upload_interval` (unix
time), so the calls of one interval are due together and go in one upload of at most
`batch` calls. Metrica links calls to visits of the last 21 days only: a call older than
that when its upload is made is left out (counted as skipped). A call without a client
id makes no row (counted).

Columns: ClientId (ym_uid), DateTime (call start, unix seconds, UTC), PhoneNumber (the
number dialled: the tracking number the page showed), TalkDuration and HoldDuration
(talk and ring seconds), CallMissed (1 unless answered), Tag ("qualified" for a
qualified call, else the outcome), FirstTimeCaller, URL (the visit's landing page),
CallTrackerURL (the call in the dashboard, with `[http] public_url`), StaticCall (1 for a
static-number call).
"""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from calltrackd.tracking.model import CallRecord, MetricaExport, WebhookDelivery
from calltrackd.webhooks.destinations import USER_AGENT, Prepared, Request, http_error

from .common import call_link, session_of, started_ts, text_or_none

__all__ = ["COLUMNS", "WINDOW", "MetricaDestination", "due_at", "metrica_csv", "metrica_row",
           "multipart"]

COLUMNS: Final = ("ClientId", "DateTime", "PhoneNumber", "TalkDuration", "HoldDuration",
                  "CallMissed", "Tag", "FirstTimeCaller", "URL", "CallTrackerURL", "StaticCall")
WINDOW: Final = 21 * 86400.0
NO_CLIENT_ID: Final = "no Metrica client id"
TOO_OLD: Final = "older than Metrica's 21 days"


def metrica_row(record: CallRecord, public_url: str | None) -> bytes | str:
    """The row's body (its CSV values as JSON), or why the call is not uploaded."""
    session = session_of(record)
    ym_uid = text_or_none(session.ym_uid if session else None)
    if ym_uid is None or not ym_uid.isascii() or not ym_uid.isdigit():
        return NO_CLIENT_ID
    att = record.attribution
    values = {
        "ClientId": ym_uid,
        "DateTime": str(int(started_ts(record))),
        "PhoneNumber": record.did,
        "TalkDuration": str(round(record.talk_seconds or 0)),
        "HoldDuration": str(round(record.ring_seconds or 0)),
        "CallMissed": "0" if record.outcome == "answered" else "1",
        "Tag": "qualified" if record.qualified else (record.outcome or "failed"),
        "FirstTimeCaller": "1" if record.first_time_caller else "0",
        "URL": (session.landing_page or "") if session else "",
        "CallTrackerURL": call_link(public_url, record.id) or "",
        "StaticCall": "1" if att is not None and att.kind == "static" else "0",
    }
    return json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def due_at(now: float, interval: float) -> float:
    """The next multiple of `interval`: the calls of one interval are uploaded together."""
    if interval <= 0:
        return now
    return math.ceil(now / interval) * interval


def metrica_csv(rows: Sequence[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for values in rows:
        writer.writerow([values.get(c, "") for c in COLUMNS])
    return out.getvalue().encode("utf-8")


def multipart(filename: str, content: bytes, content_type: str = "text/csv",
              boundary: str | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data form with one file field "file"."""
    boundary = boundary or "calltrackd" + secrets.token_hex(12)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True, slots=True)
class MetricaDestination:
    export: MetricaExport
    kind: str = "metrica"
    concurrency: int | None = 1  # one upload at a time per counter

    @property
    def key(self) -> str:
        return self.export.ref

    @property
    def batch(self) -> int:
        return self.export.batch

    def prepare(self, rows: Sequence[WebhookDelivery], now: float) -> Prepared:
        send: list[WebhookDelivery] = []
        skip: list[tuple[WebhookDelivery, str]] = []
        values: list[dict[str, str]] = []
        for row in rows[: self.batch]:
            try:
                v = json.loads(row.body)
                when = float(v["DateTime"])
            except (ValueError, KeyError, TypeError):
                skip.append((row, "unreadable row"))
                continue
            if now - when > WINDOW:
                skip.append((row, TOO_OLD))
                continue
            send.append(row)
            values.append(v)
        if not send:
            return Prepared(None, skip=skip)
        body, content_type = multipart("calls.csv", metrica_csv(values))
        query = urlencode({"client_id_type": "CLIENT_ID", "comment": "calltrackd"})
        url = (f"{self.export.base_url.rstrip('/')}/management/v1/counter/"
               f"{self.export.counter_id}/offline_conversions/upload_calls?{query}")
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT,
                   "Authorization": f"OAuth {self.export.token}"}
        return Prepared(Request(url, body, headers, secrets=(self.export.token,)), send, skip)

    def accepted(self, status: int, body: bytes) -> str | None:
        if not 200 <= status < 300:
            try:
                message = json.loads(body).get("message")
            except (ValueError, AttributeError):
                message = None
            return f"HTTP {status}: {message}" if message else http_error(status, body)
        return None
