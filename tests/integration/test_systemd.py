"""Running under systemd: the unit file verifies, the daemon speaks the notify protocol
(READY, RELOADING, STOPPING, WATCHDOG), and SIGHUP applies a changed configuration
without dropping the call in progress."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config

ROOT = Path(__file__).resolve().parents[2]
NEW_DID = "+74990000777"


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
        assert "reload refused" in daemon.log_text()
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
