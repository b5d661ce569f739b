"""Log lines: one JSON object per line for our loggers and the standard library's, and
repeated warnings rate-limited with a count."""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog

from calltrackd.config import LogSettings
from calltrackd.logging import RateLimit, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(limit: RateLimit, level: str, event: str) -> MutableMapping[str, Any] | None:
    try:
        return limit(None, level, {"event": event, "level": level})
    except structlog.DropEvent:
        return None


def test_repeated_warnings_pass_a_burst_then_one_line_with_the_count() -> None:
    clock = Clock()
    limit = RateLimit(burst=3, window=10.0, clock=clock)
    passed = [run(limit, "warning", "tracking.record_deferred") for _ in range(3500)]
    assert sum(p is not None for p in passed) == 3
    assert run(limit, "warning", "other event") is not None  # per event
    assert all(run(limit, "info", "call ended") is not None for _ in range(100))  # never
    clock.now += 10.0
    line = run(limit, "warning", "tracking.record_deferred")
    assert line is not None and line["suppressed"] == 3497
    assert run(limit, "warning", "tracking.record_deferred") is not None  # a fresh burst


def test_counts_left_out_are_logged_when_the_event_stops() -> None:
    clock = Clock()
    limit = RateLimit(burst=1, window=10.0, clock=clock)
    for _ in range(50):
        run(limit, "warning", "store.slow")
    with structlog.testing.capture_logs() as logs:
        limit.flush()  # the window is still open: nothing yet
        clock.now += 10.0
        limit.flush()
    assert [x["event"] for x in logs] == ["store.slow"]
    assert run(limit, "warning", "store.slow")["suppressed"] == 49  # type: ignore[index]


def test_library_records_and_warnings_are_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="info", format="json"))
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        logging.getLogger("asyncio").info("below the libraries' level: dropped")
        for i in range(20):  # rate-limited like our own lines, never an error of logging
            logging.getLogger("asyncio").error("Unhandled exception %d", i)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        structlog.get_logger("calltrackd").info("calltrackd started", sip=["udp:1"])
        lines = capsys.readouterr().err.strip().splitlines()
    finally:  # leave the process as other tests expect it
        logging.captureWarnings(False)
        logging.getLogger().handlers[:] = []
        structlog.reset_defaults()
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [d["event"] for d in docs[:2]] == ["Error handling request",
                                            "Task exception was never retrieved"]
    assert docs[0]["logger"] == "aiohttp.server" and docs[0]["level"] == "error"
    assert "RuntimeError: boom" in docs[0]["exception"]
    limited = [d for d in docs if d["event"].startswith("Unhandled exception")]
    assert [d["event"] for d in limited] == [f"Unhandled exception {i}" for i in range(5)]
    rest = [d for d in docs if d not in limited]
    assert "deprecated thing" in rest[2]["event"] and rest[2]["logger"] == "py.warnings"
    assert rest[3]["event"] == "calltrackd started" and "timestamp" in rest[3]
    assert len(rest) == 4
