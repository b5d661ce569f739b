"""structlog set-up: one JSON object per line on stderr (or console lines), for our own
loggers and for the libraries' standard-library ones (aiohttp's server, asyncio, Python
warnings, uncaught exceptions), which go through the same processors.

Repeated warnings and errors are rate-limited per event (`RateLimit`): in a store outage
every call logs the same warning, and a log that repeats one line thousands of times
hides everything else. The first `burst` lines of an event in a `window` pass, the rest
are counted, and the first line after the window says how many were left out
(`"suppressed": N`). Info and debug lines (one per call start and end) are never limited.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

import structlog

from .config import LogSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_LIMITED = frozenset({"warning", "error", "critical", "exception"})


class RateLimit:
    """A structlog processor: at most `burst` lines per event name (and logger) per
    `window` seconds at warning level and above; the next line carries the count left out."""

    def __init__(self, burst: int = 5, window: float = 10.0, keys: int = 4096,
                 clock: Any = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self.keys = keys
        self.clock = clock
        self._lock = threading.Lock()  # the store's threads and the loop may both log
        self._seen: dict[tuple[str, str], list[float]] = {}  # [window start, lines, left out]

    def __call__(self, logger: Any, method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        level = str(event.get("level", method))
        if level not in _LIMITED:
            return event
        key = (str(event.get("logger", "")), str(event.get("event", "")))
        now = self.clock()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.window:
                if state is None and len(self._seen) >= self.keys:
                    self._seen.clear()  # bounded: event names may carry data
                left_out = int(state[2]) if state else 0
                self._seen[key] = [now, 1.0, 0.0]
                if left_out:
                    event["suppressed"] = left_out
                    event["suppressed_seconds"] = round(now - state[0], 1)  # type: ignore[index]
                return event
            if state[1] < self.burst:
                state[1] += 1
                return event
            state[2] += 1
        raise structlog.DropEvent

    def flush(self) -> None:
        """Log the count left out of every event whose window has passed (called every
        few seconds): an outage's last repeats are counted even if the event stops."""
        now = self.clock()
        with self._lock:
            due = [key for key, st in self._seen.items()
                   if st[2] and now - st[0] >= self.window]
        for logger_name, event in due:
            extra = {"logger": logger_name} if logger_name else {}
            _summary_log.warning(event, summary=True, **extra)


_summary_log = structlog.get_logger("calltrackd.log")
LIMIT = RateLimit()  # the one configure_logging installs


def flush_suppressed() -> None:
    LIMIT.flush()


class _StdlibLimit(logging.Filter):
    """The same rate limit for standard-library records (a formatter may not drop one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        probe = {"level": record.levelname.lower(), "logger": record.name,
                 "event": str(record.msg)}  # the template: its arguments vary
        try:
            LIMIT(None, probe["level"], probe)
        except structlog.DropEvent:
            return False
        if "suppressed" in probe:
            record.calltrackd_suppressed = (probe["suppressed"], probe["suppressed_seconds"])
        return True


def _logger_name(logger: Any, method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """`logger`: the name a standard-library record came from (aiohttp.server, asyncio),
    and the count its rate limit left out."""
    record = event.get("_record")
    if record is not None:
        event.setdefault("logger", record.name)
        left_out = getattr(record, "calltrackd_suppressed", None)
        if left_out is not None:
            event["suppressed"], event["suppressed_seconds"] = left_out
    return event


class _Stamp:
    """structlog's `TimeStamper(fmt="iso", utc=True)`, the same text (the UTC ISO time,
    `2026-12-02T06:18:32.123456Z`, no fraction on a whole second as isoformat() writes
    it), with the second's date and time formatted once per second, not once per line."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads read it whole

    def __call__(self, logger: Any, method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        second, ns = divmod(self.clock(), 1_000_000_000)
        cached, prefix = self._second
        if second != cached:
            prefix = dt.datetime.fromtimestamp(second, dt.UTC).isoformat()[:19]
            self._second = (second, prefix)
        us = ns // 1000  # datetime.now() floors to the microsecond too
        event["timestamp"] = f"{prefix}.{us:06d}Z" if us else prefix + "Z"
        return event


class _JSONRenderer(structlog.processors.JSONRenderer):
    """structlog's JSON renderer with its `json.JSONEncoder` made once: `json.dumps` with
    a `default` makes a new encoder for every line. The same text."""

    def __init__(self) -> None:
        super().__init__()
        self._encode = json.JSONEncoder(**self._dumps_kw).encode

    def __call__(self, logger: Any, name: str,
                 event_dict: MutableMapping[str, Any]) -> str:
        return self._encode(event_dict)


def configure_logging(settings: LogSettings) -> None:
    renderer: structlog.typing.Processor
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = _JSONRenderer()
    limit = LIMIT
    timestamper = _Stamp()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            limit,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # the standard library's loggers (aiohttp, asyncio, warnings): the same JSON lines
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            _logger_name,
            timestamper,
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    handler.addFilter(_StdlibLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, _LEVELS[settings.level]))
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_thread


_crash_log = structlog.get_logger("calltrackd.crash")


def _uncaught(kind: type[BaseException], exc: BaseException,
              tb: TracebackType | None) -> None:
    _crash_log.critical("crash.uncaught", exc_info=(kind, exc, tb))


def _uncaught_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _crash_log.critical("crash.uncaught_in_thread",
                            thread=args.thread.name if args.thread else None,
                            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
