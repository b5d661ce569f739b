"""Target health through the running daemon, over UDP and TCP: a tracker with two
targets, each a SIPp UAS that answers OPTIONS probes and calls. The first is killed (by its
PID) and a black-hole socket takes its port: once its probes fail, calltrackd_target_up is
0 for it and a call goes straight to the second (the black hole receives probes only, never
the INVITE, and the call waits on no timeout). A new UAS on the first port answers again:
it is up and calls go to it."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    Daemon,
    Sipp,
    by_did,
    daemon_toml,
    free_port,
    pbx_uri,
    start_daemon,
    tracker,
)

DID = "+74990000001"
WAIT = 30.0  # bound of every wait on the probes (they run each 0.5 s): a loaded machine


@dataclass
class Setup:
    daemon: Daemon
    transport: str
    port_a: int
    port_b: int

    @property
    def a(self) -> str:
        return pbx_uri(self.port_a, self.transport)

    @property
    def b(self) -> str:
        return pbx_uri(self.port_b, self.transport)


@pytest.fixture(params=["udp", "tcp"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    transport = request.param
    sip, http, a, b = free_port(), free_port(), free_port(), free_port()
    text = daemon_toml(
        sip, http,
        tracker("main", DID, pbx_uri(a, transport), pbx_uri(b, transport),
                ring_timeout="20s"),
        sip={"listen": [f"udp:127.0.0.1:{sip}", f"tcp:127.0.0.1:{sip}"],
             "target_probe_interval": "0.5s", "target_probe_timeout": "1s",
             "target_probe_failures": 2},
        log={"level": "info", "format": "json"})
    daemon = start_daemon(tmp_path, text, sip, http)
    yield Setup(daemon, transport, a, b)
    assert daemon.stop() == 0, daemon.log_text()[-3000:]


def target_up(daemon: Daemon) -> dict[str, float]:
    with urllib.request.urlopen(f"{daemon.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for m in re.finditer(r'^calltrackd_target_up\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        assert labels["tracker"] == "main", labels
        out[labels["target"]] = float(m[2])
    return out


def wait_for(what: str, check: Callable[[], bool], daemon: Daemon) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} in {WAIT}s: {target_up(daemon)}\n"
                                 f"{daemon.log_text()[-3000:]}")
        time.sleep(0.2)


def call(setup: Setup, make: Callable[..., Sipp], name: str) -> dict[str, Any]:
    uac = make(name, "uac_call.xml", free_port(), "-s", DID, "-m", "1", "-d", "200",
               "-timeout", "30s", "-timeout_error",
               remote=f"127.0.0.1:{setup.daemon.sip_port}", transport=setup.transport)
    res = uac.wait(40)
    assert res.ok, res.output
    return setup.daemon.wait_call(by_did(DID))


def pbx(setup: Setup, make: Callable[..., Sipp], name: str, port: int) -> Sipp:
    return make(name, "uas_options_answer.xml", port, "-timeout", "120s",
                transport=setup.transport)


class BlackHole:
    """A port that takes what is sent to it and never answers (over TCP: accepts
    connections and reads them)."""

    def __init__(self, transport: str, port: int) -> None:
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            self.sock.listen(16)
        self.sock.setblocking(False)
        self.stream = kind == socket.SOCK_STREAM
        self.conns: list[socket.socket] = []
        self.data = b""

    def received(self) -> bytes:
        while self.stream:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            conn.setblocking(False)
            self.conns.append(conn)
        for s in self.conns if self.stream else [self.sock]:
            while True:
                try:
                    chunk = s.recv(65535)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self.data += chunk if self.stream else b"\n---\n" + chunk
        return self.data

    def close(self) -> None:
        for s in [*self.conns, self.sock]:
            s.close()


def test_a_dead_target_is_skipped_until_it_answers_again(
        setup: Setup, sipp_factory: Callable[..., Sipp]) -> None:
    daemon = setup.daemon
    first = pbx(setup, sipp_factory, "pbx_a", setup.port_a)
    pbx(setup, sipp_factory, "pbx_b", setup.port_b)
    wait_for("both up", lambda: target_up(daemon) == {setup.a: 1.0, setup.b: 1.0}, daemon)
    cdr = call(setup, sipp_factory, "uac1")
    assert cdr["target"] == setup.a and cdr["outcome"] == "answered", cdr

    first.kill()  # SIGKILL to its PID
    hole = BlackHole(setup.transport, setup.port_a)
    try:
        wait_for("first down", lambda: target_up(daemon).get(setup.a) == 0.0, daemon)
        assert target_up(daemon)[setup.b] == 1.0
        cdr = call(setup, sipp_factory, "uac2")
        assert cdr["target"] == setup.b and cdr["outcome"] == "answered", cdr
        assert float(cdr["ring_seconds"]) < 10.0, cdr  # no wait on the dead one's timeout
        received = hole.received()
        assert b"OPTIONS sip:" in received and b"INVITE" not in received, received[:400]
    finally:
        hole.close()
    lines = [ln for ln in daemon.log_text().splitlines() if '"target.down"' in ln]
    assert lines and setup.a in lines[0], lines

    pbx(setup, sipp_factory, "pbx_a2", setup.port_a)
    wait_for("first up again", lambda: target_up(daemon).get(setup.a) == 1.0, daemon)
    cdr = call(setup, sipp_factory, "uac3")
    assert cdr["target"] == setup.a and cdr["outcome"] == "answered", cdr
    assert '"target.up"' in daemon.log_text()
