"""Hunt mode `simultaneous` end to end: the daemon as a process, SIPp as the carrier and
as two PBXes rung at once; the first rings and must receive our CANCEL, the second
answers and the call record names it as the target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import LOOPBACK, Sipp, daemon_toml, free_port, pbx_uri, start_daemon, tracker
from .test_calls import fetch_record, forwarded_call_ids

DID = "+74990000090"


def test_simultaneous_second_phone_answers_and_the_first_gets_cancel(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    sip, http, ringing_port, answering_port = free_port(), free_port(), free_port(), free_port()
    text = daemon_toml(
        sip, http,
        tracker("acme", DID, {"uri": pbx_uri(ringing_port), "name": "front_desk"},
                {"uri": pbx_uri(answering_port), "name": "sales"},
                ring_timeout="20s", hunt="simultaneous"),
        log={"level": "debug", "format": "json"},
        carriers=[{**LOOPBACK, "did_from": "ruri"}])
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        # rings and never answers: the scenario fails unless a CANCEL comes
        ringing = sipp_factory("ringing", "uas_ring_cancel.xml", ringing_port, "-m", "1",
                               "-timeout", "40s")
        answering = sipp_factory("answering", "uas_answer.xml", answering_port, "-m", "1",
                                 "-timeout", "40s")
        res = sipp_factory("uac", "uac_call.xml", free_port(), "-s", DID, "-m", "1",
                           "-d", "300", "-timeout", "30s", "-timeout_error",
                           remote=f"127.0.0.1:{sip}").wait(40)
        assert res.ok, res.output
        assert answering.wait(20).ok, answering.wait(1).output
        rang = ringing.wait(20)
        assert rang.ok, rang.output
        [to_ringing] = forwarded_call_ids(ringing)
        [to_answering] = forwarded_call_ids(answering)
        assert to_ringing == to_answering  # one call, forked
        cdr = fetch_record(daemon, to_answering)
        assert (cdr["outcome"], cdr["target"]) == ("answered", pbx_uri(answering_port))
        assert any(m.start_line.startswith("CANCEL") for m in ringing.traces()
                   if not m.sent)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()[-3000:]

