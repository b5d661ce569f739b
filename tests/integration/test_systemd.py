"""Running under systemd: the unit file verifies, the daemon speaks the notify protocol
(READY, RELOADING, STOPPING, WATCHDOG), and SIGHUP applies a changed configuration (a new
static number, a pool that gains and loses numbers) without dropping the call in progress."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Receiver, Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config
from .test_tracking_flow import DEFAULT, POOL
from .test_tracking_flow import config as tracking_config

ROOT = Path(__file__).resolve().parents[2]
NEW_DID = "+74990000777"
NEW_POOL_NUMBER = "+74990000019"


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    unit = (ROOT / "systemd" / "calltrackd.service").read_text()
    # point ExecStart at this checkout's installed console script
    unit = unit.replace("/opt/calltrackd/venv", str(Path(sys.executable).parent.parent))
    path = tmp_path / "calltrackd.service"
    path.write_text(unit)
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    problems = [ln for ln in proc.stderr.splitlines() if "calltrackd.service" in ln]
    assert proc.returncode == 0 and not problems, proc.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(10)
    yield sock
    sock.close()


def read_until(sock: socket.socket, field: str) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen.extend(sock.recv(4096).decode().splitlines())
        if field in seen:
            return seen
    raise AssertionError(f"no {field}; got {seen}")


def test_notify_protocol_and_reload_without_dropping_a_call(
    tmp_path: Path, notify_socket: socket.socket, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = config(sip, http, pbx_port, free_port(), "udp")
    daemon = start_daemon(tmp_path, text, sip, http, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    try:
        read_until(notify_socket, "READY=1")
        read_until(notify_socket, "WATCHDOG=1")
        # a call in progress across the reload
        pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "2", "-timeout", "30s")
        first = sipp_factory("first", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                             "-d", "2500", "-timeout", "30s", "-timeout_error",
                             remote=f"127.0.0.1:{sip}")
        time.sleep(0.8)
        # a bad file is refused and the running configuration kept
        daemon.config.write_text(text + "\nbogus = 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        read_until(notify_socket, "READY=1")
        assert '"config.reload_refused"' in daemon.log_text()
        # a good one with a new static number takes effect
        daemon.config.write_text(text.replace(
            'channel = "billboard"',
            f'channel = "billboard"\n  [[trackers.static]]\n  number = "{NEW_DID}"\n'
            '  channel = "radio"'))
        daemon.proc.send_signal(signal.SIGHUP)
        read_until(notify_socket, "READY=1")
        second = sipp_factory("second", "uac_call.xml", free_port(), "-s", NEW_DID, "-m", "1",
                              "-d", "200", "-timeout", "30s", "-timeout_error",
                              remote=f"127.0.0.1:{sip}")
        assert second.wait(30).ok
        res = first.wait(30)
        assert res.ok, res.output
        assert pbx.wait(10).ok
        first_cdr = daemon.wait_call(lambda c: c["did"] == DID_MAIN)
        assert first_cdr["outcome"] == "answered" and first_cdr["talk_seconds"] > 2.0
        assert daemon.wait_call(lambda c: c["did"] == NEW_DID)["outcome"] == "answered"
        daemon.proc.send_signal(signal.SIGTERM)
        read_until(notify_socket, "STOPPING=1")
        assert daemon.proc.wait(20) == 0
    finally:
        daemon.stop()


def visit(daemon: Daemon, visitor: int, session_id: str | None = None) -> dict[str, Any]:
    status, answer = daemon.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "session_id": session_id, "client_id": f"GA1.2.{visitor}.1",
        "utm_source": "google", "utm_medium": "cpc"}, admin=False)
    assert status == 200, answer
    return dict(answer)


def wait_log(daemon: Daemon, text: str, after: int) -> str:
    """The daemon's log from byte `after` on, once `text` appears there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tail = daemon.log_text()[after:]
        if text in tail:
            return tail
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log: {daemon.log_text()[after:][-3000:]}")


def test_sighup_with_a_changed_pool_takes_effect_without_dropping_a_call_in_progress(
    tmp_path: Path, store_url: str, receiver: Receiver, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = tracking_config(sip, http, pbx_port, receiver.url, store_url)
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        holders = {}  # number -> the session holding it: the whole pool is taken
        for i in range(len(POOL)):
            answer = visit(daemon, i)
            assert answer["kind"] == "dynamic", answer
            holders[answer["number"]] = answer["session_id"]
        assert sorted(holders) == POOL
        kept, dropped = POOL[:2], POOL[2]
        pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "2", "-timeout", "40s")
        first = sipp_factory("first", "uac_call.xml", free_port(), "-s", kept[0], "-m", "1",
                             "-d", "4000", "-timeout", "30s", "-timeout_error",
                             remote=f"127.0.0.1:{sip}")
        deadline = time.monotonic() + 10
        while not daemon.calls() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.calls(), "the first call never started"

        changed = json.dumps([*kept, NEW_POOL_NUMBER])
        daemon.config.write_text(text.replace(json.dumps(POOL), changed))
        mark = len(daemon.log_text())
        daemon.proc.send_signal(signal.SIGHUP)
        wait_log(daemon, '"config.reloaded"', mark)
        # a bad file is refused with the reason and the pool just loaded stays
        daemon.config.write_text(text.replace(
            json.dumps(POOL), json.dumps([*kept, NEW_POOL_NUMBER, "not a number"])))
        mark = len(daemon.log_text())
        daemon.proc.send_signal(signal.SIGHUP)
        refused = wait_log(daemon, '"config.reload_refused"', mark)
        assert "trackers[0].pools[0].numbers[3]" in refused, refused

        for number in kept:  # visitors whose numbers stayed keep them
            again = visit(daemon, 0, holders[number])
            assert (again["kind"], again["number"]) == ("dynamic", number), again
        newcomer = visit(daemon, 10)  # the new number is the pool's only free one
        assert (newcomer["kind"], newcomer["number"]) == ("dynamic", NEW_POOL_NUMBER)
        # the removed number is given to nobody: its visitor now finds the pool full
        lost = visit(daemon, 2, holders[dropped])
        assert (lost["kind"], lost["number"]) == ("default", DEFAULT), lost

        second = sipp_factory("second", "uac_call.xml", free_port(), "-s", NEW_POOL_NUMBER,
                              "-m", "1", "-d", "200", "-timeout", "30s", "-timeout_error",
                              remote=f"127.0.0.1:{sip}")
        assert second.wait(30).ok
        res = first.wait(30)
        assert res.ok, res.output
        assert pbx.wait(10).ok
        first_cdr = daemon.wait_call(lambda c: c["did"] == kept[0])
        assert first_cdr["outcome"] == "answered" and first_cdr["talk_seconds"] > 3.5
        assert first_cdr["attribution"]["session"]["id"] == holders[kept[0]]
        new_cdr = daemon.wait_call(lambda c: c["did"] == NEW_POOL_NUMBER)
        assert new_cdr["outcome"] == "answered"
        assert new_cdr["attribution"]["kind"] == "dynamic"
        assert new_cdr["attribution"]["session"]["id"] == newcomer["session_id"]
    finally:
        assert daemon.stop() == 0
