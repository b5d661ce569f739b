"""A call the caller cancels while its routing waits for the routing webhook, end to
end: the daemon as a process, a real aiohttp receiver that answers too late, SIPp as the
carrier (CANCEL after the 100 Trying and the 180 Ringing calltrackd sends while it asks)
and as a PBX that must receive nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .conftest import LOOPBACK, Sipp, daemon_toml, free_port, pbx_uri, start_daemon, tracker
from .test_calls import fetch_record
from .test_routing_webhook import SECRET, Client

DID = "+74990000091"


def test_cancel_while_the_routing_webhook_is_asked_keeps_the_record(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    """The caller hangs up while the routing webhook is still thinking: 487, a record
    (tracker, DID, caller; cancelled by the caller), and no PBX is dialled."""
    sip, http, pbx_port = free_port(), free_port(), free_port()
    client = Client(free_port())
    client.answers = {DID: ("sleep", 5.0)}
    client.start()
    text = daemon_toml(
        sip, http,
        tracker("acme", DID, {"uri": pbx_uri(pbx_port), "name": "sales"},
                routing_webhook={"url": client.url, "secret": SECRET, "timeout": "4s"}),
        log={"level": "debug", "format": "json"},
        carriers=[{**LOOPBACK, "did_from": "ruri"}])
    daemon = start_daemon(tmp_path, text, sip, http)
    try:
        pbx = sipp_factory("pbx", "uas_answer.xml", pbx_port, "-m", "1", "-timeout", "20s")
        res = sipp_factory("uac", "uac_cancel_on_trying.xml", free_port(), "-s", DID,
                           "-m", "1", "-d", "500", "-timeout", "30s", "-timeout_error",
                           remote=f"127.0.0.1:{sip}").wait(40)
        assert res.ok, res.output  # 100 and 180, then 200 to the CANCEL and 487
        deadline = time.monotonic() + 20
        while not client.received and time.monotonic() < deadline:
            time.sleep(0.05)
        call_id = client.received[0]["json"]["call_id"]
        cdr = fetch_record(daemon, call_id, timeout=20)
        assert (cdr["did"], cdr["caller"], cdr["hangup_by"]) == (DID, "+79161234567",
                                                                 "caller")
        assert cdr["outcome"] in ("cancelled", "no_answer"), cdr
        time.sleep(0.5)
        assert not [m for m in pbx.traces() if not m.sent], "the PBX was dialled"
    finally:
        code = daemon.stop()
        client.stop()
    assert code == 0, daemon.log_text()[-3000:]
