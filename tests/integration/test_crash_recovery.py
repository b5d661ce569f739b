"""Records always close: SIGKILL the daemon with calls up, start it again, and every CDR
the crash left open is closed (`failed`, hung up by `system`, reason `restart`, ended at
the node's last heartbeat) and its `call.ended` reaches a real webhook receiver."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import redis as redis_client

from .conftest import SQLITE, Receiver, Sipp, free_port, start_daemon
from .test_tracking_flow import STATIC, config

CALLS = 6


def last_heartbeat(tmp_path: Path, store_url: str) -> float | None:
    """The node's latest heartbeat (epoch seconds) as its store holds it."""
    if store_url == SQLITE:
        db = sqlite3.connect(tmp_path / "var" / "calltrackd.db", timeout=5)
        try:
            row = db.execute("SELECT max(ts) FROM heartbeat").fetchone()
        except sqlite3.OperationalError:  # not created yet
            return None
        finally:
            db.close()
        return None if row[0] is None else float(row[0])
    with redis_client.Redis.from_url(store_url) as r:
        beats = r.hvals("ctd:heartbeat")
    return max((float(b) for b in beats), default=None)


def test_sigkill_with_calls_up_then_restart_closes_every_record(
    tmp_path: Path, receiver: Receiver, store_url: str, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url, store_url)
    d = start_daemon(tmp_path, cfg, sip, http)
    sipp_factory("pbx", "uas_answer.xml", pbx, "-m", str(CALLS), "-timeout", "300s")
    # long calls: the caller would hang up after 5 minutes
    sipp_factory("carrier", "uac_call.xml", free_port(), "-s", STATIC, "-m", str(CALLS),
                 "-l", str(CALLS), "-r", "10", "-d", "300000", "-timeout", "300s",
                 remote=f"127.0.0.1:{sip}")
    deadline = time.monotonic() + 60
    up: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        up = [c for c in d.calls(limit="100") if c["answered_at"] and c["outcome"] is None]
        if len(up) == CALLS:
            break
        time.sleep(0.2)
    assert len(up) == CALLS, up
    # at least one heartbeat after the last answer (read from the store: no upper bound on
    # when it comes on a loaded machine)
    last_answer = max(datetime.fromisoformat(str(c["answered_at"]).replace("Z", "+00:00"))
                      .timestamp() for c in up)
    deadline = time.monotonic() + 60
    while (beat := last_heartbeat(tmp_path, store_url)) is None or beat <= last_answer:
        assert time.monotonic() < deadline, f"no heartbeat after {last_answer}: {beat}"
        time.sleep(0.1)
    killed_at = time.time()
    d.stop(signal.SIGKILL)
    assert d.proc.returncode == -signal.SIGKILL

    d2 = start_daemon(tmp_path, cfg, sip, http)
    try:
        ids = {str(c["id"]) for c in up}
        deadline = time.monotonic() + 60
        closed: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(closed) < CALLS:
            closed = {str(c["id"]): c for c in d2.calls(limit="100")
                      if c["id"] in ids and c["outcome"] is not None}
            time.sleep(0.2)
        assert set(closed) == ids, closed
        for call_id, c in closed.items():
            assert c["outcome"] == "failed" and c["hangup_by"] == "system", c
            assert c["reason"] == "restart" and c["carrier"] == "loopback", c
            ended = datetime.fromisoformat(str(c["ended_at"]).replace("Z", "+00:00"))
            answered = datetime.fromisoformat(str(c["answered_at"]).replace("Z", "+00:00"))
            # the last time the node was known alive: after the answer, before the kill
            assert answered <= ended and ended.timestamp() <= killed_at + 1, c
            assert abs(float(c["talk_seconds"]) - (ended - answered).total_seconds()) < 0.01, c
            status, one = d2.http("GET", f"/v1/calls/{call_id}")
            assert status == 200 and one["reason"] == "restart"
        deadline = time.monotonic() + 60
        delivered: set[str] = set()
        while time.monotonic() < deadline and delivered != ids:
            delivered = {r["json"]["call"]["id"] for r in receiver.events("call.ended")
                         if r["json"]["call"].get("reason") == "restart"
                         and r["json"]["call"]["carrier"] == "loopback"}
            time.sleep(0.2)
        assert delivered == ids, [r["json"] for r in receiver.events("call.ended")]
        assert "recorder.closed_after_crash" in d2.log_text()
        # a second restart finds nothing left to close
        d2.stop()
        d3 = start_daemon(tmp_path, cfg, sip, http)
        d3.stop()
        assert d3.log_text().count("recorder.closed_after_crash") == 1
    finally:
        d2.stop()
