"""The carrier ACL of deploy/kamailio/kamailio.cfg in front of a calltrackd node.

Kamailio (127.0.0.1) admits INVITEs only from the carriers of its address file, over UDP
and TCP, and names the carrier in X-Calltrackd-Carrier, which the node believes from
Kamailio only (`[sip] trusted_proxies`). Two carriers (127.0.0.2 "alpha", 127.0.0.3
"beta") and a stranger (127.0.0.4) call through it; the node's [[carriers]] entries have
no addresses of their own, so only Kamailio's word makes a call theirs. With
STRANGERS_DROP_UDP a stranger hears nothing over UDP (no reflection), still 403 over TCP.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ADMIN, CALLER, SCENARIOS, Daemon, Sipp, free_port, start_daemon
from .test_kamailio import start_kamailio, stop_kamailio

ALPHA, BETA, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
STATIC = "+74993009999"
NATIONAL = "84993009999"  # STATIC as dialled in Russia: E.164 only with alpha's country


def config(sip: int, http: int, pbx: int) -> str:
    return f"""
[sip]
listen = ["udp:127.0.0.1:{sip}"]
shutdown_grace = "2s"
trusted_proxies = ["127.0.0.1/32"]   # Kamailio (so no stranger either)
[http]
listen = "127.0.0.1:{http}"
admin_token = "{ADMIN}"
[store]
url = "sqlite:///./var/calltrackd.db"
[log]
level = "info"
[[carriers]]
name = "alpha"
addresses = []
default_country = "RU"
[[carriers]]
name = "beta"
addresses = []
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74993000000"
forward = ["sip:127.0.0.1:{pbx};transport=udp"]
  [[trackers.static]]
  number = "{STATIC}"
  channel = "radio"
"""


@dataclass
class Edge:
    node: Daemon
    port: int  # Kamailio's, UDP and TCP
    pbx: int
    kamailio_log: Path


@contextlib.contextmanager
def behind_kamailio(tmp_path: Path, defines: tuple[str, ...] = ()) -> Iterator[Edge]:
    """A node behind Kamailio (started with more `defines`)."""
    pbx, sip, http = free_port(), free_port(), free_port()
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    node = start_daemon(node_dir, config(sip, http, pbx), sip, http, timeout=60)
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        proc, log, _ = start_kamailio(tmp_path, port, [sip], {ALPHA: "alpha", BETA: "beta"},
                                      defines)
        yield Edge(node, port, pbx, log)
    finally:
        if proc is not None:
            stop_kamailio(proc)
        node.stop(signal.SIGKILL)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    with behind_kamailio(tmp_path) as e:
        yield e


@pytest.fixture
def dropping_edge(tmp_path: Path) -> Iterator[Edge]:
    with behind_kamailio(tmp_path, ("STRANGERS_DROP_UDP",)) as e:
        yield e


def forging(tmp: Path, scenario: str, carrier: str) -> str:
    """`scenario` with `X-Calltrackd-Carrier: <carrier>` in its INVITE (a path SIPp takes)."""
    text = (SCENARIOS / scenario).read_text()
    forged = text.replace("Subject: calltrackd test\n",
                          f"Subject: calltrackd test\n      X-Calltrackd-Carrier: {carrier}\n",
                          1)
    assert forged != text
    path = tmp / f"forged_{Path(scenario).stem}_{carrier}.xml"
    path.write_text(forged)
    return str(path)


def carriers_of_calls(node: Daemon) -> dict[str, str | None]:
    """CDR id -> the carrier entry the node took the call in by, as the API shows it."""
    return {c["id"]: c["carrier"] for c in node.calls(limit="100")}


def test_carriers_are_named_by_kamailio_and_strangers_get_403_and_reach_nobody(
    tmp_path: Path, edge: Edge, sipp_factory: Callable[..., Sipp]
) -> None:
    remote = f"127.0.0.1:{edge.port}"
    calls = [  # (name, source, transport, scenario, dialled, carrier it must be)
        ("alpha_udp", ALPHA, "udp", "uac_call.xml", NATIONAL, "alpha"),
        ("beta_tcp", BETA, "tcp", "uac_call.xml", STATIC, "beta"),
        ("beta_udp", BETA, "udp", "uac_call.xml", STATIC, "beta"),
        ("alpha_tcp_forging_beta", ALPHA, "tcp", forging(tmp_path, "uac_call.xml", "beta"),
         NATIONAL, "alpha"),
    ]
    pbx = sipp_factory("pbx", "uas_answer.xml", edge.pbx, "-m", str(len(calls)),
                       "-timeout", "60s")
    cdrs: dict[str, str] = {}
    for name, source, transport, scenario, dialled, carrier in calls:
        res = sipp_factory(name, scenario, free_port(), "-i", source, "-s", dialled,
                           "-m", "1", "-d", "200", "-timeout", "20s", "-timeout_error",
                           remote=remote, transport=transport).wait(30)
        assert res.ok, res.output
        cdr = edge.node.wait_call(lambda c: c["id"] not in cdrs, timeout=20)
        assert cdr["did"] == STATIC and cdr["outcome"] == "answered", cdr
        assert cdr["caller"] == CALLER
        cdrs[cdr["id"]] = carrier
    assert pbx.wait(20).ok
    assert carriers_of_calls(edge.node) == cdrs  # each call is its carrier's
    for name in ("alpha", "beta"):  # and is listed under it
        assert {c["id"] for c in edge.node.calls(carrier=name)} == {
            i for i, carrier in cdrs.items() if carrier == name}

    # strangers, over UDP and TCP, plain or forging a carrier's name: one 403 each
    strangers = [("stranger_udp", "udp", "uac_expect_403.xml"),
                 ("stranger_tcp", "tcp", "uac_expect_403.xml"),
                 ("stranger_udp_forging", "udp", forging(tmp_path, "uac_expect_403.xml",
                                                         "alpha")),
                 ("stranger_tcp_forging", "tcp", forging(tmp_path, "uac_expect_403.xml",
                                                         "beta"))]
    pbx_port = sipp_factory("pbx_for_strangers", "uas_answer.xml", edge.pbx, "-m", "1",
                            "-timeout", "60s")
    for name, transport, scenario in strangers:
        sipp = sipp_factory(name, scenario, free_port(), "-i", STRANGER, "-s", STATIC,
                            "-m", "1", "-timeout", "20s", "-timeout_error",
                            remote=remote, transport=transport)
        res = sipp.wait(30)
        assert res.ok, res.output
        answers = [t.start_line for t in sipp.traces() if not t.sent]
        assert answers and all(a.startswith("SIP/2.0 403") for a in answers), answers
    # nothing reached the node or the PBX: a carrier call after them is the next call
    res = sipp_factory("alpha_after", "uac_call.xml", free_port(), "-i", ALPHA,
                       "-s", NATIONAL, "-m", "1", "-d", "200", "-timeout", "20s",
                       "-timeout_error", remote=remote).wait(30)
    assert res.ok, res.output
    assert pbx_port.wait(20).ok
    invites = [t for t in pbx_port.traces() if not t.sent and t.start_line.startswith("INVITE")]
    assert len(invites) == 1, [t.start_line for t in invites]
    latest = edge.node.wait_call(lambda c: c["id"] not in cdrs, timeout=20)
    assert carriers_of_calls(edge.node)[latest["id"]] == "alpha"
    assert len(edge.node.calls(limit="100")) == len(calls) + 1
    log = edge.node.log_text()
    assert STRANGER not in log, "a stranger's request reached the node"


def stranger_invite(port: int, call_id: str) -> bytes:
    return (f"INVITE sip:{STATIC}@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {STRANGER}:5070;branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:{CALLER}@{STRANGER}>;tag=1\r\nTo: <sip:{STATIC}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{STRANGER}:5070>\r\n"
            "X-Calltrackd-Carrier: alpha\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()


def test_with_strangers_drop_udp_a_stranger_hears_nothing_over_udp_and_403_over_tcp(
    dropping_edge: Edge, sipp_factory: Callable[..., Sipp]
) -> None:
    edge = dropping_edge
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((STRANGER, 0))
        s.settimeout(3.0)
        for i in range(5):
            s.sendto(stranger_invite(edge.port, f"drop-{i}"), ("127.0.0.1", edge.port))
        with pytest.raises(TimeoutError):
            s.recv(65535)  # not even a 100 Trying
    sipp = sipp_factory("stranger_tcp", "uac_expect_403.xml", free_port(), "-i", STRANGER,
                        "-s", STATIC, "-m", "1", "-timeout", "20s", "-timeout_error",
                        remote=f"127.0.0.1:{edge.port}", transport="tcp")
    assert sipp.wait(30).ok
    # a carrier still calls in (over UDP)
    pbx = sipp_factory("pbx", "uas_answer.xml", edge.pbx, "-m", "1", "-timeout", "30s")
    res = sipp_factory("alpha", "uac_call.xml", free_port(), "-i", ALPHA, "-s", NATIONAL,
                       "-m", "1", "-d", "200", "-timeout", "20s", "-timeout_error",
                       remote=f"127.0.0.1:{edge.port}").wait(30)
    assert res.ok, res.output
    assert pbx.wait(20).ok
    assert STRANGER not in edge.node.log_text()
    assert [c["carrier"] for c in edge.node.calls()] == ["alpha"]
