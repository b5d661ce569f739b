"""A shed INVITE leaves a trace: a log line (rate-limited) and a count per reason and
tracker, while `calltrackd_overload_rejected_total` keeps counting as before."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .conftest import Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config
from .test_dialog_guard import metric_sum, traced


def test_invite_over_max_calls_is_logged_and_counted_for_its_tracker(
    tmp_path: Path, sipp_factory: Callable[..., Sipp]
) -> None:
    sip, http, pbx_port = free_port(), free_port(), free_port()
    text = config(sip, http, pbx_port, free_port(), "udp", carriers="127.0.0.1/32")
    d = start_daemon(tmp_path, text.replace('shutdown_grace = "10s"',
                                            'shutdown_grace = "10s"\nmax_calls = 1'), sip, http)
    try:
        pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "60s")
        held = sipp_factory("held", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m", "1",
                            "-d", "3000", "-timeout", "60s", "-timeout_error",
                            remote=f"127.0.0.1:{sip}")
        # the first call is up (placed again if the busy machine made the daemon shed it)
        traced(d, "out", lambda m: m.startswith("SIP/2.0 200"), caller=held)
        shed = sipp_factory("shed", "uac_expect_503.xml", free_port(), "-s", DID_MAIN,
                            "-m", "1", "-timeout", "30s", "-timeout_error",
                            remote=f"127.0.0.1:{sip}").wait(40)
        assert shed.ok, shed.output
        assert held.wait(60).ok and pbx.wait(20).ok
        deadline = time.monotonic() + 10
        lines: list[dict[str, object]] = []
        while not lines and time.monotonic() < deadline:
            lines = [x for x in (json.loads(ln) for ln in d.log_text().splitlines()
                                 if ln.startswith("{") and '"b2bua.invite_shed"' in ln)
                     if x["reason"] != "overload"]  # the held call's, if it was
            time.sleep(0.1)
        assert len(lines) == 1, lines
        line = lines[0]
        assert (line["reason"], line["tracker"], line["did"], line["source"]) == \
            ("max_calls", "main", DID_MAIN, "127.0.0.1")
        assert line["level"] == "warning" and line["suppressed"] == 0
        with urllib.request.urlopen(f"{d.base}/metrics", timeout=10) as resp:
            exposition = resp.read().decode().splitlines()
        assert 'calltrackd_shed_calls_total{reason="max_calls",tracker="main"} 1.0' \
            in exposition
        assert metric_sum(d, "calltrackd_overload_rejected_total") == 1 + held.shed
    finally:
        d.stop()
