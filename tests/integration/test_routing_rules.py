"""Routing rules and what the PBX sees, end to end: the daemon as a process, SIPp as the
carrier and as two PBXes; each PBX gets the calls its rule sends it, and nothing else,
with the call's attribution in X-Calltrackd-* headers and before the caller's name."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    LOOPBACK,
    Daemon,
    Sipp,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)
from .test_calls import fetch_record, forwarded_call_ids

SALES_DID = "+74990000071"  # no rule: the tracker's forward (sales first)
SUPPORT_DID = "+74990000072"  # the rule "support_line" → support only


@pytest.fixture
def ports() -> tuple[int, int, int, int]:
    return free_port(), free_port(), free_port(), free_port()


@pytest.fixture
def daemon(tmp_path: Path, ports: tuple[int, int, int, int]) -> Iterator[Daemon]:
    sip, http, sales, support = ports
    text = daemon_toml(
        sip, http,
        tracker("acme", "+74990000070",
                {"uri": pbx_uri(sales), "name": "sales"},
                {"uri": pbx_uri(support), "name": "support"},
                ring_timeout="20s", timezone="Europe/Berlin",
                static=[{"number": SALES_DID, "channel": "billboard"},
                        {"number": SUPPORT_DID, "channel": "radio"}],
                routes=[{"name": "support_line", "did": [SUPPORT_DID],
                         "forward": ["support"], "ring_timeout": "15s"},
                        {"name": "never", "days": ["holiday"], "forward": ["support"]}],
                pbx_headers=["channel", "first_time", "campaign"], display_channel=True),
        log={"level": "debug", "format": "json"},
        carriers=[{**LOOPBACK, "did_from": "ruri"}])
    d = start_daemon(tmp_path, text, sip, http)
    yield d
    assert d.stop() == 0, d.log_text()[-3000:]


def started_rule(daemon: Daemon, call_id: str) -> str | None:
    for line in daemon.log_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "call.started" and entry.get("call") == call_id:
                rule = entry.get("rule")
                return str(rule) if rule is not None else None
    raise AssertionError(f"no call.started line for {call_id}")


def test_each_pbx_gets_the_call_its_rule_sends(
        daemon: Daemon, ports: tuple[int, int, int, int],
        sipp_factory: Callable[..., Sipp]) -> None:
    _, _, sales_port, support_port = ports
    sales = sipp_factory("sales", "uas_answer.xml", sales_port, "-m", "1", "-timeout", "40s")
    support = sipp_factory("support", "uas_answer.xml", support_port, "-m", "1",
                           "-timeout", "40s")
    remote = f"127.0.0.1:{daemon.sip_port}"
    for name, did in (("uac_support", SUPPORT_DID), ("uac_sales", SALES_DID)):
        res = sipp_factory(name, "uac_call.xml", free_port(), "-s", did, "-m", "1",
                           "-d", "300", "-timeout", "30s", "-timeout_error",
                           remote=remote).wait(40)
        assert res.ok, res.output
    assert support.wait(20).ok and sales.wait(20).ok
    [to_support] = forwarded_call_ids(support)
    [to_sales] = forwarded_call_ids(sales)  # the rule's call never reached sales
    assert to_support != to_sales
    cdr = fetch_record(daemon, to_support)
    assert (cdr["did"], cdr["outcome"], cdr["target"]) == (
        SUPPORT_DID, "answered", pbx_uri(support_port))
    assert fetch_record(daemon, to_sales)["target"] == pbx_uri(sales_port)
    assert started_rule(daemon, to_support) == "support_line"
    assert started_rule(daemon, to_sales) is None


def test_pbx_receives_the_attribution_headers(
        daemon: Daemon, ports: tuple[int, int, int, int],
        sipp_factory: Callable[..., Sipp]) -> None:
    _, _, sales_port, _ = ports
    # the PBX scenario fails the call unless X-Calltrackd-Channel: billboard (the static
    # number's channel), X-Calltrackd-First-Time and From: "billboard Caller" are there
    pbx = sipp_factory("pbx", "uas_expect_attribution.xml", sales_port, "-m", "1",
                       "-timeout", "40s")
    res = sipp_factory("uac", "uac_call.xml", free_port(), "-s", SALES_DID, "-m", "1",
                       "-d", "300", "-timeout", "30s", "-timeout_error",
                       remote=f"127.0.0.1:{daemon.sip_port}").wait(40)
    assert res.ok, res.output
    assert pbx.wait(20).ok, pbx.wait(1).output
    [invite] = [m for m in pbx.traces() if not m.sent and m.start_line.startswith("INVITE")]
    assert invite.header("X-Calltrackd-Campaign") is None  # a static number has none
    cdr = fetch_record(daemon, forwarded_call_ids(pbx)[0])
    assert cdr["attribution"]["channel"] == "billboard"
