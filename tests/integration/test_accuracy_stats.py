"""A pool's own default number and the accuracy figures of /v1/stats, end to end: visitors
get numbers over the API, SIPp dials them, and the call records and /v1/stats say how sure
each attribution is and how big the pool should be. On both stores."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    SQLITE,
    Daemon,
    Sipp,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)

POOL = ["+74990000021", "+74990000022"]
POOL_DEFAULT = "+74990000029"
DEFAULT = "+74990000020"


def config(sip: int, http: int, pbx: int, store: str) -> str:
    return daemon_toml(
        sip, http, tracker(
            "acme", DEFAULT, pbx_uri(pbx), reservation_ttl="6m",
            pools=[{"name": "paid", "sources": ["google/cpc"], "numbers": POOL,
                    "default_number": POOL_DEFAULT}]),
        store=store, sip={"shutdown_grace": "5s"})


@pytest.fixture
def daemon(tmp_path: Path, store_url: str) -> Iterator[tuple[Daemon, int]]:
    sip, http, pbx = free_port(), free_port(), free_port()
    d = start_daemon(tmp_path, config(sip, http, pbx, store_url), sip, http)
    yield d, pbx
    d.stop()


def call(d: Daemon, pbx: int, sipp_factory: Callable[..., Sipp], did: str) -> None:
    uas = sipp_factory(f"pbx{did}", "uas_answer.xml", pbx, "-m", "1", "-timeout", "30s")
    res = sipp_factory(f"carrier{did}", "uac_call.xml", free_port(), "-s", did, "-m", "1",
                       "-d", "300", "-timeout", "30s", "-timeout_error",
                       remote=f"127.0.0.1:{d.sip_port}").wait(40)
    assert res.ok, res.output
    assert uas.wait(10).ok


def visitor(d: Daemon) -> dict[str, str]:
    status, answer = d.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "utm_source": "google", "utm_medium": "cpc"}, admin=False)
    assert status == 200, answer
    return dict(answer)


def test_overflow_calls_keep_the_pools_channel_and_stats_estimate_the_accuracy(
    daemon: tuple[Daemon, int], sipp_factory: Callable[..., Sipp]
) -> None:
    d, pbx = daemon
    first, _, overflow = visitor(d), visitor(d), visitor(d)
    assert first["kind"] == "dynamic" and first["number"] in POOL
    assert overflow == {**overflow, "kind": "default", "number": POOL_DEFAULT}

    call(d, pbx, sipp_factory, first["number"])
    held = d.wait_call(lambda c: c["did"] == first["number"])["attribution"]
    assert held["kind"] == "dynamic" and held["session"]["id"] == first["session_id"]
    assert held["pool"] == "paid" and held["confidence"] == 1.0  # nobody else held it

    call(d, pbx, sipp_factory, POOL_DEFAULT)
    over = d.wait_call(lambda c: c["did"] == POOL_DEFAULT)["attribution"]
    assert over["kind"] == "default" and over["channel"] == "paid"
    assert over["pool"] == "paid" and over["confidence"] == 0.0

    status, stats = d.http("GET", "/v1/stats?tracker=acme")
    assert status == 200, stats
    acme = stats["trackers"][0]
    assert acme["calls"] == 2
    assert acme["accuracy"] == 0.5  # the trade's figure: one of two calls to a default
    assert acme["estimated_accuracy"] == 0.5
    assert {"source": "default/paid", "channel": "paid"}.items() <= {
        k: v for row in acme["sources"] if row["kind"] == "default" for k, v in row.items()
    }.items()
    pool = acme["pools"][0]
    assert pool["pool"] == "paid" and pool["estimated_accuracy"] == 0.5
    assert pool["recommended_size"] >= 3  # three visitors at once: two numbers were short
    curve = pool["size_curve"]
    assert curve and all(set(p) == {"size", "estimated_accuracy"} for p in curve)
    assert [p["size"] for p in curve] == sorted(p["size"] for p in curve)
    assert any(p["size"] == 2 for p in curve)  # the pool's own size is on the curve
    accuracies = [p["estimated_accuracy"] for p in curve]
    assert accuracies == sorted(accuracies) and 0 < accuracies[-1] <= 1


def test_a_restarted_daemon_gives_the_same_accuracy_figures(
    tmp_path: Path, sipp_factory: Callable[..., Sipp]
) -> None:
    # the delay model the confidences and the size curve use is learned from the calls
    # in memory; a restart rebuilds it from the stored call records
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, SQLITE)
    d = start_daemon(tmp_path, cfg, sip, http)
    try:
        visitors = [visitor(d), visitor(d)]
        for v in visitors * 2:
            call(d, pbx, sipp_factory, v["number"])
        for v in visitors:  # the last call to each number has its record written
            d.wait_call(to(v["number"]))
        status, before = d.http("GET", "/v1/stats?tracker=acme")
        assert status == 200, before
    finally:
        assert d.stop() == 0
    d = start_daemon(tmp_path, cfg, sip, http)
    try:
        deadline = time.monotonic() + 30  # a worker beside the running daemon
        while "tracking.delay_model_rebuilt" not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()[-3000:]
            time.sleep(0.1)
        status, after = d.http("GET", "/v1/stats?tracker=acme")
        assert status == 200, after
    finally:
        d.stop()
    was, now = before["trackers"][0], after["trackers"][0]
    assert was["calls"] == now["calls"] == 4
    assert now["estimated_accuracy"] == was["estimated_accuracy"] == 1.0
    keys = ("estimated_accuracy", "replayed_accuracy", "attainable_accuracy",
            "recommended_size", "size_curve")
    assert {k: now["pools"][0][k] for k in keys} == {k: was["pools"][0][k] for k in keys}


def to(number: str) -> Callable[[dict[str, Any]], bool]:
    return lambda c: bool(c["did"] == number)
