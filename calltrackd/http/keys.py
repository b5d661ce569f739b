"""The services the HTTP handlers use, each under a typed key of the aiohttp application
(`web.AppKey`), so a handler names what it reads (`request.app[STORE]`) instead of
reaching through the whole daemon. `calltrackd.app` puts them in before the handler
modules' `setup`; each module lists the keys it reads in `NEEDS`, and its `setup`
checks them with `require` (a missing one fails at start, not on the first request).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiohttp import web

from ..config import Settings
from ..media.store import RecordingStore
from ..metrics import Metrics
from ..store.base import Store
from ..tracking.service import TrackingService


class Health(Protocol):
    """What `/healthz` asks: the checks, and whether the node is draining."""

    async def health(self) -> tuple[bool, dict[str, str]]: ...

    @property
    def draining(self) -> bool: ...


# the live configuration: a function, because SIGHUP replaces the settings
SETTINGS = web.AppKey[Callable[[], Settings]]("settings")
STORE = web.AppKey[Store]("store")
TRACKING = web.AppKey("tracking", TrackingService)
METRICS = web.AppKey("metrics", Metrics)
RECORDINGS = web.AppKey("recordings", RecordingStore)
HEALTH = web.AppKey[Health]("health")
# the Prometheus exposition, gauges refreshed: what `/metrics` answers
SCRAPE = web.AppKey[Callable[[], Awaitable[bytes]]]("scrape")
# wakes the outbox worker: a handler has just added rows (a resend, a call.updated)
NOTIFY_OUTBOX = web.AppKey[Callable[[], None]]("notify_outbox")
# INVITEs shed since start (`Engine.shed_counts`), for `/v1/stats`
SHED = web.AppKey[Callable[[], dict[str, Any]]]("shed")
# wall-clock seconds (time.time in the daemon, a fixed value in tests)
CLOCK = web.AppKey[Callable[[], float]]("clock")


def require(http: web.Application, needs: Iterable[web.AppKey[Any]], who: str) -> None:
    """RuntimeError naming the keys `who` reads that nobody has put in `http`."""
    missing = [repr(k) for k in needs if k not in http]
    if missing:
        raise RuntimeError(f"{who} needs {', '.join(missing)} in the HTTP application")
