"""TCP connections on a real daemon with `[sip] tcp_idle_timeout` set short (1 s): a
client that connects and sends nothing is closed after it; the connections of a call
that is up stay open through a pause longer than the timeout (the caller's BYE goes over
the connection its INVITE came on); a source over `tcp_max_connections_per_source` is
refused. Closes are counted in calltrackd_sip_connections_closed_total."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Daemon, Sipp, daemon_toml, free_port, need, pbx_uri, start_daemon, tracker
from .test_tls import wait_listening

DID = "+74990000001"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    need("sipp")
    tmp: Path = tmp_path_factory.mktemp("tcp-conns")
    sip, http, pbx = free_port(), free_port(), free_port()
    d = start_daemon(tmp, daemon_toml(
        sip, http, tracker("acme", DID, pbx_uri(pbx, "tcp"), ring_timeout="20s"),
        sip={"listen": [f"udp:127.0.0.1:{sip}", f"tcp:127.0.0.1:{sip}"],
             "shutdown_grace": "5s", "tcp_idle_timeout": "1s",
             "tcp_max_connections_per_source": 4}), sip, http)
    d.extra["pbx"] = pbx
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]


def closed(daemon: Daemon, reason: str) -> float:
    status, text = daemon.http("GET", "/metrics", admin=False)
    assert status == 200
    for family in text_string_to_metric_families(text):
        if family.name == "calltrackd_sip_connections_closed":
            return sum(s.value for s in family.samples if s.name.endswith("_total")
                       and s.labels == {"transport": "tcp", "reason": reason})
    return 0.0


def wait_closed_by_peer(sock: socket.socket, timeout: float = 30.0) -> bool:
    """Whether the daemon closes `sock` (EOF or reset) within `timeout` (a bound for a
    loaded machine, not a measure)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_client_is_closed_after_the_idle_timeout(daemon: Daemon) -> None:
    before = closed(daemon, "idle")
    with socket.create_connection(("127.0.0.1", daemon.sip_port), timeout=5) as sock:
        assert wait_closed_by_peer(sock), daemon.log_text()[-2000:]
    assert closed(daemon, "idle") >= before + 1
    assert '"sip.connection_idle"' in daemon.log_text()


def test_connections_of_a_call_that_is_up_stay_open(
        daemon: Daemon, sipp_factory: Callable[..., Sipp]) -> None:
    """The call pauses 4 s (four idle timeouts) between ACK and BYE with nothing on
    either connection; the BYE still goes over the caller's connection, and the target's
    connection we opened carries it on."""
    pbx = sipp_factory("pbx", "uas_answer.xml", daemon.extra["pbx"], "-m", "1",
                       "-timeout", "60s", transport="tcp")
    wait_listening(daemon.extra["pbx"], pbx.proc, "pbx")
    before = closed(daemon, "idle")
    carrier = sipp_factory("uac", "uac_call.xml", free_port(), "-s", DID, "-m", "1",
                           "-d", "4000", "-timeout", "40s", "-timeout_error",
                           remote=f"127.0.0.1:{daemon.sip_port}", transport="tcp")
    res = carrier.wait(60)
    assert res.ok, res.output + "\n--- daemon ---\n" + daemon.log_text()[-4000:]
    assert pbx.wait(30).ok
    record = daemon.wait_call(lambda c: c["did"] == DID, 20.0)
    assert record["outcome"] == "answered", record
    assert float(record["talk_seconds"]) >= 3.5, record
    bye = [m for m in pbx.traces() if not m.sent and m.start_line.startswith("BYE ")]
    assert len(bye) == 1  # the BYE reached the PBX over the connection of the INVITE
    # nothing was closed for idleness while the call was up (the SIPp ends closed theirs)
    assert closed(daemon, "idle") == before


def test_source_over_its_connection_bound_is_refused(daemon: Daemon) -> None:
    before = closed(daemon, "source_limit")
    socks = [socket.create_connection(("127.0.0.1", daemon.sip_port), timeout=5)
             for _ in range(5)]
    try:
        deadline = time.monotonic() + 30
        while closed(daemon, "source_limit") < before + 1:
            assert time.monotonic() < deadline, daemon.log_text()[-2000:]
            time.sleep(0.1)
        # the fifth from this host went at once, before any idle timeout could matter
        assert '"sip.connection_refused"' in daemon.log_text()
    finally:
        for sock in socks:
            sock.close()
