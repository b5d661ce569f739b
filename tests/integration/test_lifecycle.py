"""The daemon's life: graceful drain on SIGTERM, max call duration, CDRs across restarts."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config


def test_call_in_progress_at_sigterm_completes_and_is_recorded(
    tmp_path: Path, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = config(sip, http, pbx_port, free_port(), "udp")
    daemon = start_daemon(tmp_path, text, sip, http)
    remote = f"127.0.0.1:{sip}"
    pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "30s")
    carrier = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                           "-d", "3000", "-timeout", "30s", "-timeout_error", remote=remote)
    deadline = time.monotonic() + 10
    while not daemon.calls() and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.proc.send_signal(signal.SIGTERM)
    # while draining, a new call is turned away so the dispatcher tries another node
    late = sipp_factory("late", "uac_expect_503.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                        "-timeout", "20s", "-timeout_error", remote=remote).wait(30)
    assert late.ok, late.output
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    assert daemon.proc.wait(20) == 0
    log = daemon.log_text()
    assert '"draining"' in log and '"calltrackd stopped"' in log
    # the record was written before exit: a new process finds it
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        cdr = daemon.wait_call(lambda c: c["did"] == DID_MAIN)
        assert cdr["outcome"] == "answered" and cdr["hangup_by"] == "caller"
        assert abs(float(cdr["talk_seconds"]) - 3.0) < 0.5
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
