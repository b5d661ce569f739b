"""Tracking never costs a call: when the store is slow, not down, the call to a
visitor's number is still answered at once, and its CDR says it went unattributed and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import redis as redis_client

from .conftest import Receiver, Redis, Sipp, free_port, start_daemon
from .test_tracking_flow import POOL, Env, call, config

# Below the Redis store's 1 s socket timeout: every command waits, none fails.
PAUSE = 0.9


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_slow_store_leaves_the_call_answered_and_the_cdr_unattributed(
    tmp_path: Path, redis: Redis, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url, redis.url)
    env = Env(tmp_path, start_daemon(tmp_path, cfg, sip, http), pbx, cfg)
    try:
        status, session = env.daemon.http("POST", "/v1/sessions", {
            "tracker": "pk_acme", "utm_source": "google", "utm_campaign": "spring"},
            admin=False)
        assert status == 200 and session["kind"] == "dynamic" and session["number"] in POOL
        number = session["number"]
        with redis_client.Redis(port=redis.port) as r:
            paused_at = time.time()
            r.execute_command("CLIENT", "PAUSE", int(PAUSE * 1000), "ALL")
        call(env, sipp_factory, number, 100)
        slow = env.daemon.wait_call(lambda c: c["did"] == number)
        # the INVITE came while Redis held every command for a while yet, and the PBX
        # answered after its own 200 ms of ringing, not once Redis was back
        started, answered = _ts(slow["started_at"]), _ts(slow["answered_at"])
        assert paused_at <= started < paused_at + 0.5, slow
        assert answered - started < 0.45 and answered < paused_at + PAUSE, slow
        assert slow["outcome"] == "answered"
        assert slow["attribution"] == {"kind": "none", "channel": None, "source": None,
                                       "medium": None, "session": None,
                                       "error": "attribution timeout",
                                       "confidence": None, "pool": None}
        assert slow["first_time_caller"] is None  # unknown: the store was not asked in time
        # the same number dialled with Redis answering again: the visitor was there all along
        call(env, sipp_factory, number, 100)
        again = env.daemon.wait_call(lambda c: c["did"] == number and c["id"] != slow["id"])
        assert again["attribution"]["kind"] == "dynamic"
        assert again["attribution"]["session"]["id"] == session["session_id"]
    finally:
        env.daemon.stop()
