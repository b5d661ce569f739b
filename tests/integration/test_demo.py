"""The demo configuration as shipped (config/calltrackd.toml): the daemon listens on its
ports, and a SIPp call to a demo DID is answered by a SIPp PBX behind it, with a CDR whose
talk time matches the call's length."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Sipp, free_port, start_daemon

ROOT = Path(__file__).resolve().parents[2]


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_demo_configuration_forwards_a_call(tmp_path: Path,
                                            sipp_factory: Callable[..., Sipp]) -> None:
    for port in (5060, 5070, 8080):
        if not port_free(port):
            pytest.fail(f"port {port} is taken: the demo configuration needs it")
    shutil.copy(ROOT / "config" / "calltrackd.toml", tmp_path / "demo.toml")
    daemon = start_daemon(tmp_path, (tmp_path / "demo.toml").read_text(), 5060, 8080)
    daemon.admin_token = "demo-admin-token"
    try:
        pbx = sipp_factory("pbx", "uas_answer.xml", 5070, "-m", "1", "-timeout", "30s")
        res = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", "+74990000100",
                           "-m", "1", "-d", "2000", "-timeout", "30s", "-timeout_error",
                           remote="127.0.0.1:5060").wait(40)
        assert res.ok, res.output
        assert pbx.wait(10).ok
        cdr = daemon.wait_call(lambda c: c["did"] == "+74990000100")
        assert cdr["outcome"] == "answered" and cdr["tracker"] == "demo"
        assert abs(float(cdr["talk_seconds"]) - 2.0) < 0.5, cdr
        assert cdr["attribution"]["kind"] == "static"
        assert cdr["attribution"]["channel"] == "billboard"
    finally:
        assert daemon.stop() == 0
