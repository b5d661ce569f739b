"""The daemon's life: graceful drain on SIGTERM (503 to new INVITEs and to OPTIONS probes,
webhook events kept for the next start), max call duration, CDRs across restarts."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Receiver, Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config


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
    # and the dispatcher's probe takes the node out of its set
    probe = options(sip).decode()
    assert probe.startswith("SIP/2.0 503 ") and "\r\nRetry-After: " in probe, probe
    res = carrier.wait(40)
    assert res.ok, res.output
    assert pbx.wait(10).ok
    assert daemon.proc.wait(20) == 0
    log = daemon.log_text()
    assert '"draining"' in log and '"calltrackd stopped"' in log
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
