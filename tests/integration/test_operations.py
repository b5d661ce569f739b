"""Health and operations on the running daemon: /healthz follows the store's ability to
write (not just to answer) and says "draining" while draining; calltrackd_store_up and
calltrackd_build_info; one log line when the store goes down and one when it is back,
with the per-call warnings in between rate-limited; every log line is JSON; SIGHUP lists
what changed and what needs a restart."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from .conftest import Daemon, Receiver, Redis, Sipp, free_port, start_daemon
from .test_tracking_flow import STATIC, config


def json_lines(d: Daemon) -> list[dict[str, Any]]:
    lines = [ln for ln in d.log_text().splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]  # raises on a line that is not JSON


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [x for x in json_lines(d) if x["event"] == name]


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(d: Daemon, name: str) -> list[str]:
    status, text = d.http("GET", "/metrics", admin=False)
    assert status == 200
    return [ln for ln in str(text).splitlines() if ln.startswith(name)]


def calls(d: Daemon, pbx: int, sipp_factory: Callable[..., Sipp], n: int, tag: str) -> int:
    """n calls at 10/s; the number accepted (a node whose loop falls behind on a loaded
    machine may refuse some with 503 + Retry-After: refused, not failed)."""
    sipp_factory(f"pbx{tag}", "uas_answer.xml", pbx, "-timeout", "90s")
    uac = sipp_factory(f"carrier{tag}", "uac_call_or_503.xml", free_port(), "-s", STATIC,
                       "-m", str(n), "-r", "10", "-d", "100", "-timeout", "60s",
                       "-timeout_error", remote=f"127.0.0.1:{d.sip_port}")
    res = uac.wait(90)
    assert res.ok, res.output  # tracking never costs a call: the store is not writable
    assert int(res.stats["FailedCall(C)"]) == 0
    shed = len({m[1] for t in uac.traces() if not t.sent and t.raw.startswith(b"SIP/2.0 503")
                for m in [re.search(rb"(?im)^Call-ID:\s*(\S+)", t.raw)] if m})
    assert shed <= n // 2, f"{shed} of {n} calls shed"
    return n - shed


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_store_that_cannot_write_makes_health_503_and_logs_one_line_each_way(
    tmp_path: Path, receiver: Receiver, sipp_factory: Callable[..., Sipp], backend: str,
    request: pytest.FixtureRequest,
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    url = "sqlite:///./var/calltrackd.db"
    if backend == "redis":
        r: Redis = request.getfixturevalue("redis")
        url = r.url
    d = start_daemon(tmp_path, config(sip, http, pbx, receiver.url, url), sip, http)
    blocker: Any = None
    try:
        assert metric(d, "calltrackd_store_up ") == ["calltrackd_store_up 1.0"]
        build = metric(d, "calltrackd_build_info{")
        assert len(build) == 1 and 'version="' in build[0] and 'sip_core="' in build[0]
        # the store still answers reads, but refuses (or never finishes) writes
        if backend == "redis":
            blocker = redis_client.Redis(port=r.port)
            blocker.config_set("min-replicas-to-write", 1)
        else:
            blocker = sqlite3.connect(tmp_path / "var" / "calltrackd.db", timeout=1)
            blocker.execute("BEGIN EXCLUSIVE")
        health = wait_for(lambda: (h := d.http("GET", "/healthz", admin=False))[0] == 503
                          and h, "/healthz 503")
        assert health[1]["status"] == "degraded"
        assert health[1]["checks"]["store"].startswith("unavailable"), health
        assert metric(d, "calltrackd_store_up ") == ["calltrackd_store_up 0.0"]
        accepted = calls(d, pbx, sipp_factory, 20, "down")
        time.sleep(3)  # more probes fail: still one line
        if backend == "redis":
            blocker.config_set("min-replicas-to-write", 0)
        else:
            blocker.rollback()
            blocker.close()
            blocker = None
        wait_for(lambda: d.http("GET", "/healthz", admin=False)[0] == 200, "/healthz 200")
        assert metric(d, "calltrackd_store_up ") == ["calltrackd_store_up 1.0"]
        wait_for(lambda: sum(c["outcome"] == "answered" for c in d.calls(limit="100"))
                 == accepted, "every accepted call's record written once the store is back")
        assert len(events(d, "store.down")) == 1
        assert len(events(d, "store.back")) == 1
        for name in {x["event"] for x in json_lines(d) if x["level"] == "warning"}:
            # the per-call warnings of the outage: a few, then a count, not one per call
            assert len(events(d, name)) <= 7, (name, len(events(d, name)))
        if backend == "redis":  # each refused CDR write warned: the rest are counted
            summary = wait_for(lambda: [x for x in json_lines(d) if x.get("suppressed")],
                               "the count of the warnings left out")
            assert summary[0]["event"] == "tracking.record_deferred", summary
    finally:
        if blocker is not None and backend == "sqlite":
            blocker.close()
        d.stop()


def test_draining_node_answers_healthz_503_draining(
    tmp_path: Path, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url).replace('shutdown_grace = "5s"',
                                                       'shutdown_grace = "30s"')
    d = start_daemon(tmp_path, cfg, sip, http)
    try:
        sipp_factory("pbx", "uas_answer.xml", pbx, "-m", "1", "-timeout", "60s")
        sipp_factory("carrier", "uac_call.xml", free_port(), "-s", STATIC, "-m", "1",
                     "-d", "8000", "-timeout", "60s", remote=f"127.0.0.1:{sip}")
        wait_for(lambda: any(c["answered_at"] for c in d.calls()), "an answered call")
        d.proc.send_signal(signal.SIGTERM)
        _, body = wait_for(lambda: (h := d.http("GET", "/healthz", admin=False))[0] == 503
                                and h, "/healthz while draining")
        assert body["status"] == "draining", body
        assert d.proc.wait(60) == 0
        json_lines(d)
    finally:
        d.stop()


def test_reload_lists_what_changed_and_what_needs_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    sip, http, pbx = free_port(), free_port(), free_port()
    cfg = config(sip, http, pbx, receiver.url)
    d = start_daemon(tmp_path, cfg, sip, http)
    try:
        other = free_port()
        d.config.write_text(cfg.replace(f'udp:127.0.0.1:{sip}"',
                                        f'udp:127.0.0.1:{sip}", "udp:127.0.0.1:{other}"')
                            .replace('channel = "billboard"', 'channel = "radio"')
                            .replace('url = "sqlite:', 'url = "sqlite:///./var/other.db" #'))
        d.proc.send_signal(signal.SIGHUP)
        line = wait_for(lambda: events(d, "config.reloaded"), "the reload line")[0]
        assert set(line["needs_restart"]) == {"sip.listen", "store.url"}, line
        assert line["applied"] == ["trackers.acme"], line
        warned = events(d, "config.needs_restart")
        assert warned and set(warned[0]["needs_restart"]) == {"sip.listen", "store.url"}
        status, _ = d.http("GET", "/healthz", admin=False)
        assert status == 200
    finally:
        d.stop()


def test_install_script_keeps_the_configuration_0640(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    script = root / "scripts" / "install-service"
    env = {"PREFIX": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run([str(script)], env=env, check=True, timeout=60)
    cfg = tmp_path / "etc" / "calltrackd" / "calltrackd.toml"
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "etc" / "calltrackd").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "etc" / "calltrackd" / "credentials").stat().st_mode & 0o777 == 0o700
    assert cfg.stat().st_uid == 0 or cfg.stat().st_uid == __import__("os").getuid()
    cfg.chmod(0o644)  # an edited or copied file is put back to 0640, its text kept
    cfg.write_text("# edited\n")
    subprocess.run([str(script)], env=env, check=True, timeout=60)
    assert cfg.stat().st_mode & 0o777 == 0o640 and cfg.read_text() == "# edited\n"
    assert (tmp_path / "etc" / "systemd" / "system" / "calltrackd.service").exists()


def test_every_log_line_is_json_even_for_datagrams_that_upset_the_parser(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Odd digits (superscripts pass str.isdigit), a doubled version in Via, an empty Via:
    whatever the parser makes of them, the log stays one JSON object per line, repeats
    are rate-limited, and the node keeps answering."""
    import socket

    sip, http, pbx = free_port(), free_port(), free_port()
    d = start_daemon(tmp_path, config(sip, http, pbx, receiver.url), sip, http)
    try:
        head = (f"OPTIONS sip:x@127.0.0.1:{sip} SIP/2.0\r\n"
                "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: odd{n}\r\n")
        odd = [
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKa{n}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: \u00b2\r\n\r\n",
            "Via: SIP/2.0/2.0/UDP 127.0.0.1:9\r\nCSeq: \u00b9 OPTIONS\r\n\r\n",
            "Via:\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: \u00b3\r\n\r\n",
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for n in range(40):
                s.sendto((head + odd[n % 3]).format(n=n).encode(), ("127.0.0.1", sip))
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            probe.settimeout(2)
            port = probe.getsockname()[1]
            ok = (f"OPTIONS sip:x@127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port}"
                  ";branch=z9hG4bKok\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>"
                  "\r\nCall-ID: ok\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                  "Content-Length: 0\r\n\r\n").encode()

            def answered() -> bool:
                probe.sendto(ok, ("127.0.0.1", sip))
                try:
                    return probe.recv(65535).startswith(b"SIP/2.0 200")
                except TimeoutError:
                    return False

            wait_for(answered, "200 to OPTIONS after the odd datagrams")
            probe.close()
        lines = json_lines(d)  # every line parses
        for name in {x["event"] for x in lines if x["level"] in ("warning", "error")}:
            assert len(events(d, name)) <= 7, (name, len(events(d, name)))
    finally:
        d.stop()
