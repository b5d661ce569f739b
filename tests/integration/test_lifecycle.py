"""The daemon's life: graceful drain on SIGTERM (503 to new INVITEs and to OPTIONS probes,
webhook events kept for the next start), max call duration, CDRs across restarts; a start
that fails halfway stops what had started and says why in one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from calltrackd import app as app_module
from calltrackd.app import App, StartError, serve
from calltrackd.config import parse_config
from calltrackd.gcpolicy import CollectorPolicy

from .conftest import ADMIN, Receiver, Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config

VIEWER = "viewer-main-0123456789"


def options(port: int) -> bytes:
    """What the daemon answers an OPTIONS probe (as Kamailio's dispatcher sends it)."""
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe{n};rport\r\n"
           "From: <sip:dispatcher@localhost>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
           "Call-ID: probe{n}@test\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
           "Content-Length: 0\r\n\r\n").format(n=time.monotonic_ns())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        s.sendto(msg.encode(), ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


def test_call_in_progress_at_sigterm_completes_and_is_recorded(
    tmp_path: Path, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = config(sip, http, pbx_port, free_port(), "udp").replace(
        'channel = "billboard"',
        f'channel = "billboard"\n  [[trackers.webhooks]]\n  url = "{receiver.url}"\n'
        '  secret = "s3cret"') + '\n[webhooks]\nbackoff_base = "200ms"\nbackoff_cap = "1s"\n'
    text = text.replace('id = "main"\n', f'id = "main"\nviewer_tokens = ["{VIEWER}"]\n', 1)
    receiver.fail_first = 10**6  # the CRM is down until the daemon has exited
    daemon = start_daemon(tmp_path, text, sip, http)
    remote = f"127.0.0.1:{sip}"
    assert options(sip).startswith(b"SIP/2.0 200 ")
    pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "30s")
    carrier = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                           "-d", "3000", "-timeout", "30s", "-timeout_error", remote=remote)
    deadline = time.monotonic() + 10
    while receiver.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.attempts, "call.started was never tried"  # so it is pending now
    daemon.proc.send_signal(signal.SIGTERM)
    # while draining, a new call is turned away so the dispatcher tries another node
    late = sipp_factory("late", "uac_expect_503.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                        "-timeout", "20s", "-timeout_error", remote=remote)
    assert late.wait(30).ok, late.messages()
    assert re.search(r"^Retry-After: *\d+", late.messages(), re.M), late.messages()
    # counted as shed while draining, in /v1/stats (the API answers until the drain ends)
    status, stats = daemon.http("GET", "/v1/stats?tracker=main")
    assert status == 200, stats
    assert stats["shed"]["reasons"]["draining"] == 1 and stats["shed"]["total"] == 1, stats
    assert [t["shed"] for t in stats["trackers"]] == [1], stats
    # a viewer sees its tracker's count, not the node's (other trackers', unknown DIDs')
    daemon.admin_token = VIEWER
    status, seen = daemon.http("GET", "/v1/stats")
    daemon.admin_token = ADMIN
    assert status == 200 and "shed" not in seen, seen
    assert [(t["tracker"], t["shed"]) for t in seen["trackers"]] == [("main", 1)], seen
    # and the dispatcher's probe takes the node out of its set
    probe = options(sip).decode()
    assert probe.startswith("SIP/2.0 503 ") and "\r\nRetry-After: " in probe, probe
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    assert daemon.proc.wait(20) == 0
    log = daemon.log_text()
    assert '"app.draining"' in log and '"app.stopped"' in log
    assert not receiver.received
    receiver.fail_first = receiver.attempts  # the CRM is back
    # the record was written before exit: a new process finds it
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        cdr = daemon.wait_call(lambda c: c["did"] == DID_MAIN)
        assert cdr["outcome"] == "answered" and cdr["hangup_by"] == "caller"
        assert abs(float(cdr["talk_seconds"]) - 3.0) < 0.5
        # and the webhook events stayed in the outbox: the new process delivers them
        for event in ("call.started", "call.answered", "call.ended"):
            assert receiver.wait_event(event, DID_MAIN)["json"]["call"]["id"] == cdr["id"]
    finally:
        assert daemon.stop() == 0


def test_max_call_duration_ends_call_with_bye_both_ways(
    tmp_path: Path, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = config(sip, http, pbx_port, free_port(), "udp").replace(
        'max_call_duration = "1h"', 'max_call_duration = "2s"')
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "30s")
        res = sipp_factory("carrier", "uac_callee_bye.xml", free_port(), "-s", DID_MAIN, "-m",
                           "1", "-timeout", "30s", "-timeout_error",
                           remote=f"127.0.0.1:{sip}").wait(40)
        assert res.ok, res.output  # the caller got our BYE
        assert pbx.wait(10).ok  # and so did the PBX
        cdr = daemon.wait_call(lambda c: c["did"] == DID_MAIN)
        assert (cdr["outcome"], cdr["hangup_by"]) == ("answered", "system")
        assert 1.5 < float(cdr["talk_seconds"]) < 3.0
    finally:
        assert daemon.stop() == 0


# --- a start that fails halfway -------------------------------------------------------


def _bindable(port: int) -> bool:
    """Whether nothing holds `port` on 127.0.0.1 (UDP and TCP) any more."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def _taken(port: int) -> socket.socket:
    """Someone else listening on the HTTP port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_http_port_taken_exits_1_with_one_line_naming_the_step(tmp_path: Path) -> None:
    sip, http = free_port(), free_port()
    cfg = tmp_path / "calltrackd.toml"
    cfg.write_text(config(sip, http, free_port(), free_port(), "udp"))
    with _taken(http):
        proc = subprocess.run(
            [sys.executable, "-m", "calltrackd", "run", "--config", str(cfg)], cwd=tmp_path,
            capture_output=True, timeout=60, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [json.loads(ln) for ln in proc.stderr.decode().splitlines() if ln.strip()]
    errors = [x for x in lines if x["level"] in ("error", "critical")]
    assert proc.returncode == 1, lines
    assert len(errors) == 1, errors  # no traceback, no second complaint from the unwinding
    assert errors[0]["event"] == "app.start_failed" and errors[0]["step"] == "http", errors
    assert str(http) in errors[0]["error"], errors
    assert not any(x["event"] == "app.started" for x in lines)
    assert _bindable(sip)


def _app(tmp_path: Path, sip: int, http: int, store_url: str) -> App:
    text = config(sip, http, free_port(), free_port(), "udp").replace(
        "sqlite:///./var/calltrackd.db", store_url)
    return App(parse_config(tomllib.loads(text)))


def _others() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


def test_a_start_failing_at_http_stops_sip_and_store_and_leaves_no_task(
    tmp_path: Path
) -> None:
    sip, http = free_port(), free_port()

    async def main() -> None:
        app = _app(tmp_path, sip, http, f"sqlite:///{tmp_path}/calltrackd.db")
        before = _others()
        with pytest.raises(StartError) as failed:
            await app.start()
        assert failed.value.step == "http"
        assert not app._sip_up
        assert _bindable(sip), "the SIP listeners started before HTTP were not closed"
        assert _others() <= before, _others()  # the store's and the workers' tasks too
        assert not app.store._open  # type: ignore[attr-defined]
        await app.stop()  # nothing left to stop: a no-op

    with _taken(http):
        asyncio.run(main())


def test_a_store_that_cannot_be_reached_fails_the_start_before_sip_listens(
    tmp_path: Path
) -> None:
    sip, http, nobody = free_port(), free_port(), free_port()

    async def main() -> None:
        app = _app(tmp_path, sip, http, f"redis://127.0.0.1:{nobody}/0")
        before = _others()
        with pytest.raises(StartError) as failed:
            await asyncio.wait_for(app.start(), 30)
        assert failed.value.step == "tracking", failed.value
        assert app.stack.listening == [] and _bindable(sip) and _bindable(http)
        assert _others() <= before, _others()

    asyncio.run(main())


class _Crashing(CollectorPolicy):
    """The collector worker, replaced by one that fails a moment after the start."""

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("worker bug")


class _Deaf(CollectorPolicy):
    """A worker that does not listen to stop."""

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.sleep(3600)


def test_a_crashing_worker_drains_the_node_and_marks_it_failed(tmp_path: Path) -> None:
    sip, http = free_port(), free_port()

    async def main() -> None:
        app = _app(tmp_path, sip, http, f"sqlite:///{tmp_path}/calltrackd.db")
        before = _others()
        app.gc_policy = _Crashing(lambda: 0)
        await app.start()
        await asyncio.wait_for(app.shutdown.wait(), 30)  # the crash asked for a drain
        assert app.failed
        await app.drain_and_stop()
        assert _others() <= before, _others()
        assert _bindable(sip) and _bindable(http)

    asyncio.run(main())


def test_a_worker_that_ignores_stop_is_cancelled_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sip, http = free_port(), free_port()
    monkeypatch.setattr(app_module, "WORKER_GRACE", 0.2)

    async def main() -> None:
        app = _app(tmp_path, sip, http, f"sqlite:///{tmp_path}/calltrackd.db")
        before = _others()
        app.gc_policy = _Deaf(lambda: 0)
        await app.start()
        await asyncio.wait_for(app.drain_and_stop(), 30)
        assert not app.failed  # cancelled by us, not crashed
        assert _others() <= before, _others()

    asyncio.run(main())


def test_signal_handlers_are_removed_after_a_failed_start(tmp_path: Path) -> None:
    sip, http = free_port(), free_port()
    text = config(sip, http, free_port(), free_port(), "udp").replace(
        "sqlite:///./var/calltrackd.db", f"sqlite:///{tmp_path}/calltrackd.db")

    async def main() -> int:
        return await serve(parse_config(tomllib.loads(text)))

    with _taken(http):
        assert asyncio.run(main()) == 1
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
