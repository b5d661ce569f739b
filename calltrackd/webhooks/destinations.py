"""Where an outbox row goes and how: one `Destination` per kind of receiver.

The worker (`worker.py`) knows nothing of webhooks, GA4 or Telegram: it groups due rows by
their destination, asks the destination for the HTTP request that carries up to `batch` of
them (`prepare`, pure), sends it, and asks it whether the answer acknowledges them
(`accepted`, pure). A destination is built from the *current* configuration each time a
row is sent, so a rotated secret applies to retries, and a row whose destination left the
configuration resolves to None and is marked failed.

Rows a destination refuses to send (too old for the service, say) come back in
`Prepared.skip` with the reason; the worker marks them failed and counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from yarl import URL

from calltrackd import __version__
from calltrackd.tracking.model import WebhookDelivery

from .backoff import is_success
from .signing import SIGNATURE_HEADER, sign

__all__ = [
    "USER_AGENT",
    "Destination",
    "Prepared",
    "Request",
    "Resolver",
    "WebhookDestination",
    "endpoint_key",
    "redact",
]

USER_AGENT = f"calltrackd/{__version__}"


@dataclass(frozen=True, slots=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]
    # substrings of the URL that must never reach a log line or an error text
    secrets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    request: Request | None  # None: nothing left to send
    send: list[WebhookDelivery] = field(default_factory=list)  # the rows it carries
    skip: list[tuple[WebhookDelivery, str]] = field(default_factory=list)  # (row, reason)


class Destination(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def key(self) -> str:
        """The unit of concurrency and batching (never contains a secret)."""
        ...

    @property
    def batch(self) -> int:
        """Rows per request at most."""
        ...

    @property
    def concurrency(self) -> int | None:
        """Requests in flight at most; None: the worker's adaptive limit."""
        ...

    def prepare(self, rows: Sequence[WebhookDelivery], now: float) -> Prepared: ...

    def accepted(self, status: int, body: bytes) -> str | None:
        """None if the answer acknowledges the rows, else the error to record."""
        ...


# the destination of a row under the current configuration, or None once it is gone
Resolver = Callable[[WebhookDelivery], Destination | None]


def endpoint_key(url: str) -> str:
    """What the concurrency limit is per: scheme, host, port and path (never the query)."""
    try:
        u = URL(url)
        return f"{u.scheme}://{u.host}:{u.port}{u.path}"
    except (ValueError, TypeError):
        return url.split("?", 1)[0]


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def http_error(status: int, body: bytes) -> str:
    text = " ".join(body[:200].decode("utf-8", "replace").split())
    return f"HTTP {status}" + (f": {text}" if text else "")


@dataclass(frozen=True, slots=True)
class WebhookDestination:
    """A CRM endpoint: the SPEC webhook, signed; with `batch` > 1 a JSON array of events."""

    url: str
    secret: str
    batch: int = 1
    clock_int: Callable[[float], int] = int
    kind: str = "webhook"
    concurrency: int | None = None

    @property
    def key(self) -> str:
        return endpoint_key(self.url)

    def prepare(self, rows: Sequence[WebhookDelivery], now: float) -> Prepared:
        rows = list(rows[: self.batch])
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.batch == 1:
            (row,) = rows
            body = row.body
            headers["X-Calltrackd-Event"] = row.event
            headers["X-Calltrackd-Delivery"] = row.event_id
        else:
            # every element is the event's own body, byte for byte: receivers deduplicate
            # on each element's event_id; the signature covers the whole array
            body = b"[" + b",".join(r.body for r in rows) + b"]"
            headers["X-Calltrackd-Batch"] = str(len(rows))
        headers[SIGNATURE_HEADER] = sign(self.secret, body, self.clock_int(now))
        return Prepared(Request(self.url, body, headers), rows)

    def accepted(self, status: int, body: bytes) -> str | None:
        return None if is_success(status) else http_error(status, body)
