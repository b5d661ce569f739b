"""SIP over TLS in both directions, through real TLS hops.

Debian's SIPp is built without TLS, so stunnel stands in front of it on each side:

  carrier SIPp (TCP) → stunnel (client, verifies us) → calltrackd's tls: listener
  calltrackd → target transport=tls → stunnel (server) → PBX SIPp (TCP)

The test makes its own CA and certificates with the openssl command, and a second CA that
calltrackd does not know, for a target whose certificate must be refused.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ADMIN, Daemon, Sipp, free_port, need, start_daemon
from .test_calls import fetch_record

DID_GOOD = "+74990000001"  # → the PBX behind a certificate of our CA
DID_FAILOVER = "+74990000002"  # → a target with an unknown CA's certificate, then the good one
DID_ROGUE = "+74990000003"  # → only the unknown CA's target
DID_DEAD_TCP = "+74990000004"  # → a TCP target nobody listens on, then the good one


def openssl(tmp: Path, *args: str) -> None:
    subprocess.run([need("openssl"), *args], cwd=tmp, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_ca(tmp: Path, name: str) -> None:
    openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_cert(tmp: Path, ca: str, name: str, cn: str) -> None:
    """A server certificate for 127.0.0.1 and localhost, signed by `ca`."""
    (tmp / f"{name}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl(tmp, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    openssl(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
            f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext")


@dataclass
class Stunnel:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str,
                   timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} not listening on {port} in {timeout}s")


@dataclass
class Plan:
    tmp: Path
    daemon: Daemon
    tls_port: int
    carrier_port: int  # stunnel's plain side toward calltrackd's tls: listener
    pbx: int  # PBX SIPp (TCP), behind stunnel with our CA's certificate
    rogue_pbx: int  # PBX SIPp (TCP), behind stunnel with the unknown CA's certificate
    front: int  # stunnel's TLS side before the good PBX


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plan]:
    tmp = tmp_path_factory.mktemp("tls")
    need("stunnel4")
    make_ca(tmp, "ca")
    make_ca(tmp, "rogue-ca")
    make_cert(tmp, "ca", "daemon", "calltrackd one")
    make_cert(tmp, "ca", "pbx", "pbx")
    make_cert(tmp, "rogue-ca", "rogue", "rogue pbx")
    sip, tls, http = free_port(), free_port(), free_port()
    carrier, front, rogue_front = free_port(), free_port(), free_port()
    pbx, rogue_pbx, dead = free_port(), free_port(), free_port()
    conf = tmp / "stunnel.conf"
    conf.write_text(f"""
foreground = yes
pid =
debug = info
[carrier]
client = yes
accept = 127.0.0.1:{carrier}
connect = 127.0.0.1:{tls}
CAfile = {tmp}/ca.crt
verifyChain = yes
checkIP = 127.0.0.1
[pbx]
accept = 127.0.0.1:{front}
connect = 127.0.0.1:{pbx}
cert = {tmp}/pbx.crt
key = {tmp}/pbx.key
[rogue]
accept = 127.0.0.1:{rogue_front}
connect = 127.0.0.1:{rogue_pbx}
cert = {tmp}/rogue.crt
key = {tmp}/rogue.key
""")
    log = tmp / "stunnel.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([need("stunnel4"), str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp)
    tunnel = Stunnel(proc, log)
    try:
        for port in (carrier, front, rogue_front):
            wait_listening(port, proc, "stunnel")
        good = f"sip:127.0.0.1:{front};transport=tls"
        bad = f"sips:127.0.0.1:{rogue_front}"
        daemon = start_daemon(tmp, f"""
[sip]
listen = ["udp:127.0.0.1:{sip}", "tls:127.0.0.1:{tls}"]
shutdown_grace = "5s"
  [sip.tls]
  cert = "{tmp}/daemon.crt"
  key = "{tmp}/daemon.key"
  ca = "{tmp}/ca.crt"

[http]
listen = "127.0.0.1:{http}"
admin_token = "{ADMIN}"

[store]
url = "sqlite:///./var/calltrackd.db"

[[carriers]]
name = "loopback"
addresses = ["127.0.0.0/8"]
default_country = "RU"

[[trackers]]
id = "good"
public_key = "pk_good"
default_number = "{DID_GOOD}"
forward = ["{good}"]
ring_timeout = "20s"

[[trackers]]
id = "failover"
public_key = "pk_failover"
default_number = "{DID_FAILOVER}"
forward = ["{bad}", "{good}"]
ring_timeout = "20s"

[[trackers]]
id = "rogue"
public_key = "pk_rogue"
default_number = "{DID_ROGUE}"
forward = ["{bad}"]
ring_timeout = "20s"

[[trackers]]
id = "dead"
public_key = "pk_dead"
default_number = "{DID_DEAD_TCP}"
forward = ["sip:127.0.0.1:{dead};transport=tcp", "{good}"]
ring_timeout = "5m"
""", sip, http)
        try:
            yield Plan(tmp, daemon, tls, carrier, pbx, rogue_pbx, front)
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    finally:
        tunnel.stop()


def call(plan: Plan, sipp_factory: Callable[..., Sipp], did: str, scenario: str = "uac_call.xml"
         ) -> Sipp:
    carrier = sipp_factory(f"uac-{did[-1]}", scenario, free_port(), "-s", did, "-m", "1",
                           "-d", "1000", "-timeout", "40s", "-timeout_error",
                           remote=f"127.0.0.1:{plan.carrier_port}", transport="tcp")
    res = carrier.wait(60)
    assert res.ok, res.output + "\n--- daemon ---\n" + plan.daemon.log_text()[-4000:]
    return carrier


def pbx_sipp(plan: Plan, sipp_factory: Callable[..., Sipp], port: int, name: str) -> Sipp:
    pbx = sipp_factory(name, "uas_answer.xml", port, "-m", "1", "-timeout", "60s",
                       transport="tcp")
    wait_listening(port, pbx.proc, name)  # SIPp over TCP accepts once it is ready
    return pbx


def invites(sipp: Sipp) -> list[str]:
    return [m.header("X-Calltrackd-Call") or "" for m in sipp.traces()
            if not m.sent and m.start_line.startswith("INVITE ")]


def connect_failures(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's `sip.connect_failed` log lines: a target it could not reach, and why."""
    return [json.loads(line) for line in daemon.log_text().splitlines()
            if '"sip.connect_failed"' in line]


def answered(plan: Plan, pbx: Sipp) -> dict[str, object]:
    """The CDR of the one call the PBX received and answered."""
    assert pbx.wait(30).ok
    [call_id] = invites(pbx)
    record = fetch_record(plan.daemon, call_id, 20.0)
    assert record["outcome"] == "answered", record
    return record


def test_call_over_tls_in_both_directions_is_answered_and_recorded(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = pbx_sipp(plan, sipp_factory, plan.pbx, "pbx-good")
    call(plan, sipp_factory, DID_GOOD)
    record = answered(plan, pbx)
    assert record["did"] == DID_GOOD
    assert str(record["target"]).endswith(";transport=tls")
    # what arrived at the PBX came over TLS from us: the Via names TLS
    invite = next(m for m in pbx.traces() if m.start_line.startswith("INVITE "))
    assert (invite.header("Via") or "").startswith("SIP/2.0/TLS "), invite.raw[:400]


def test_target_with_a_certificate_of_an_unknown_ca_is_skipped_for_the_next(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    rogue = pbx_sipp(plan, sipp_factory, plan.rogue_pbx, "pbx-rogue")
    pbx = pbx_sipp(plan, sipp_factory, plan.pbx, "pbx-good")
    call(plan, sipp_factory, DID_FAILOVER)
    record = answered(plan, pbx)
    assert record["target"] == f"sip:127.0.0.1:{plan.front};transport=tls"
    rogue.kill()
    assert invites(rogue) == []  # the handshake failed: nothing reached that PBX
    failed = connect_failures(plan.daemon)
    assert any(e["dest"].startswith("tls:") and "certificate verify failed" in e["error"]
               for e in failed), plan.daemon.log_text()[-3000:]


def test_call_to_only_an_unknown_ca_target_fails_with_503(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    rogue = pbx_sipp(plan, sipp_factory, plan.rogue_pbx, "pbx-rogue-only")
    call(plan, sipp_factory, DID_ROGUE, "uac_expect_503.xml")
    rogue.kill()
    assert invites(rogue) == []
    record = plan.daemon.wait_call(lambda c: True, 20.0, tracker="rogue")  # written behind
    assert record["outcome"] == "failed" and record["sip_code"] == 503, record


def test_refused_tcp_connection_fails_over_at_once(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    """Nobody listens on the first target: without the 503 for the refused connection the
    call would wait out Timer B (32 s) or the 5-minute ring timeout, past the carrier's
    40 s timeout."""
    pbx = pbx_sipp(plan, sipp_factory, plan.pbx, "pbx-after-dead")
    call(plan, sipp_factory, DID_DEAD_TCP)
    record = answered(plan, pbx)
    assert record["target"] == f"sip:127.0.0.1:{plan.front};transport=tls"
    assert any(e["dest"].startswith("tcp:") for e in connect_failures(plan.daemon)), (
        plan.daemon.log_text()[-3000:])


def test_sighup_gives_the_next_tls_connection_the_new_certificate(plan: Plan) -> None:
    tmp = plan.tmp
    assert "calltrackd one" in peer_subject(plan)
    make_cert(tmp, "ca", "daemon-new", "calltrackd two")
    (tmp / "daemon-new.crt").replace(tmp / "daemon.crt")
    (tmp / "daemon-new.key").replace(tmp / "daemon.key")
    plan.daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "calltrackd two" not in (subject := peer_subject(plan)):
        assert time.monotonic() < deadline, (subject, plan.daemon.log_text()[-2000:])
        time.sleep(0.2)


def peer_subject(plan: Plan) -> str:
    ctx = ssl.create_default_context(cafile=str(plan.tmp / "ca.crt"))
    with socket.create_connection(("127.0.0.1", plan.tls_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        cert = conn.getpeercert()
    assert cert is not None
    return str(cert["subject"])



def test_sips_request_uri_over_tls_gets_a_sips_contact(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    """RFC 3261 §12.1.1: the carrier's INVITE has a sips: Request-URI, so our answers'
    Contact is a SIPS URI; the carrier's ACK and BYE go to it (over the same connection)."""
    pbx = pbx_sipp(plan, sipp_factory, plan.pbx, "pbx-sips")
    carrier = call(plan, sipp_factory, DID_GOOD, "uac_call_sips.xml")
    answered(plan, pbx)
    [ok] = [m for m in carrier.traces() if not m.sent and m.cseq_method == "INVITE"
            and m.start_line.startswith("SIP/2.0 200")]
    assert (ok.header("Contact") or "").startswith("<sips:calltrackd@127.0.0.1:"), ok.raw[:600]
    bye = next(m for m in carrier.traces() if m.sent and m.start_line.startswith("BYE "))
    assert bye.start_line.startswith("BYE sips:calltrackd@"), bye.start_line
    # the leg toward the PBX (sip:...;transport=tls) keeps a sip: Contact
    invite = next(m for m in pbx.traces() if m.start_line.startswith("INVITE "))
    assert (invite.header("Contact") or "").endswith(";transport=tls>"), invite.raw[:600]


def test_sip_request_uri_over_tls_keeps_a_sip_contact(
        plan: Plan, sipp_factory: Callable[..., Sipp]) -> None:
    pbx = pbx_sipp(plan, sipp_factory, plan.pbx, "pbx-sip")
    carrier = call(plan, sipp_factory, DID_GOOD)
    answered(plan, pbx)
    [ok] = [m for m in carrier.traces() if not m.sent and m.cseq_method == "INVITE"
            and m.start_line.startswith("SIP/2.0 200")]
    contact = ok.header("Contact") or ""
    assert contact.startswith("<sip:calltrackd@") and contact.endswith(";transport=tls>"), contact
