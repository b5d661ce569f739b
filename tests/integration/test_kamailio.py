"""Two calltrackd nodes on one Redis behind Kamailio's dispatcher (deploy/kamailio/kamailio.cfg):
calls spread over the nodes by Call-ID, a number reserved through one node's API is attributed
when the call lands on the other, and killing a node under steady load loses no call started
after the dispatcher noticed. kamcmd reloads the node list through the config's ctl socket."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import CALLER, Daemon, Redis, Sipp, by_did, free_port, start_daemon
from .test_redis_nodes import STATIC, config

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
PING_INTERVAL = 1  # seconds between the dispatcher's OPTIONS probes of each node
PROBE_TIMEOUT = 2.0  # tm's fr_timer in kamailio.cfg: how long a probe waits for an answer
# what the carrier hears when every node left shed its INVITE with 503 (overload): Kamailio
# answers 500 in its stead (RFC 3261 16.7), keeping the reason phrase
SHED = "SIP/2.0 500 Service Unavailable"


@dataclass
class Cluster:
    kamailio: subprocess.Popen[bytes]
    port: int
    nodes: list[Daemon]
    pbx: int
    log: Path
    ctl: str  # kamcmd's -s address

    def kamcmd(self, *command: str) -> str:
        binary = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        proc = subprocess.run([binary, "-s", self.ctl, *command], capture_output=True,
                              text=True, timeout=10)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def node_flags(self, node: Daemon) -> str:
        """The dispatcher's view of a node: AP active, IP/TP inactive (probing)."""
        listing = self.kamcmd("dispatcher.list")
        found = re.search(rf"URI: sip:127\.0\.0\.1:{node.sip_port}\s+FLAGS: (\w+)", listing)
        assert found, listing
        return found[1]


def start_kamailio(tmp: Path, port: int, nodes: list[int],
                   carriers: dict[str, str] | None = None, defines: tuple[str, ...] = (),
                   ) -> tuple[subprocess.Popen[bytes], Path, str]:
    """Kamailio on 127.0.0.1:`port` (UDP and TCP) with the shipped configuration, the
    `nodes` as its dispatcher set and `carriers` (address -> calltrackd carrier name, one
    group each) as its address file; by default the carrier "lo" on 127.0.0.1. `defines`
    are more -A arguments (e.g. STRANGERS_DROP_UDP)."""
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(binary).exists():
        pytest.fail("kamailio is not installed: run the README's test command (scripts/test)")
    ds = tmp / "dispatcher.list"
    ds.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in nodes))
    acl = tmp / "carriers.list"
    acl.write_text("".join(f"{group} {address} 32 0 {name}\n" for group, (address, name)
                           in enumerate((carriers or {"127.0.0.1": "lo"}).items(), 1)))
    run = tmp / "run"
    run.mkdir()
    ctl = f"unix:{run / 'kamailio_ctl'}"
    log = tmp / "kamailio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-f", str(CFG), "-DD", "-E", "-Y", str(run), "-m", "64", "-M", "8",
             "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f"LISTEN_TCP=tcp:127.0.0.1:{port}",
             "-A", f'DS_LIST="{ds}"', "-A", f'CARRIERS="{acl}"',
             "-A", f"PING_INTERVAL={PING_INTERVAL}", "-A", f'CTL_SOCKET="{ctl}"',
             *(arg for d in defines for arg in ("-A", d))],
            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (run / "kamailio_ctl").exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kamailio exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    time.sleep(PING_INTERVAL + 0.5)  # the first probes have found the nodes
    return proc, log, ctl


def stop_kamailio(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def cluster(tmp_path: Path, redis: Redis) -> Iterator[Cluster]:
    pbx = free_port()
    nodes: list[Daemon] = []
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name in ("a", "b"):
            d = tmp_path / name
            d.mkdir()
            sip, http = free_port(), free_port()
            nodes.append(start_daemon(d, config(sip, http, pbx, redis.url), sip, http,
                                      timeout=60))  # a busy machine starts slowly
        port = free_port()
        proc, log, ctl = start_kamailio(tmp_path, port, [n.sip_port for n in nodes])
        yield Cluster(proc, port, nodes, pbx, log, ctl)
    finally:
        if proc is not None:
            stop_kamailio(proc)
        for n in nodes:
            n.stop(signal.SIGKILL)


def visitor(node: Daemon, i: int) -> dict[str, Any]:
    status, s = node.http("POST", "/v1/sessions", {
        "tracker": "pk_acme", "client_id": f"GA1.2.{i}.1", "utm_source": "google",
        "utm_medium": "cpc", "utm_campaign": f"c{i}"}, admin=False)
    assert status == 200 and s["kind"] == "dynamic", s
    return dict(s)


def call_through(cluster: Cluster, sipp_factory: Callable[..., Sipp], did: str,
                 name: str) -> None:
    """One call through Kamailio, answered by the PBX. A node sheds an INVITE with 503
    when its loop falls behind (a busy machine); Kamailio tries the other node and answers
    the carrier 500 when every node shed it: then the carrier calls again, as one would."""
    uas = sipp_factory(f"pbx_{name}", "uas_answer.xml", cluster.pbx, "-m", "1",
                       "-timeout", "60s")
    for attempt in range(10):
        uac = sipp_factory(f"carrier_{name}_{attempt}", "uac_call.xml", free_port(), "-s", did,
                           "-m", "1", "-d", "200", "-timeout", "20s", "-timeout_error",
                           remote=f"127.0.0.1:{cluster.port}")
        res = uac.wait(30)
        if res.ok or not any(t.start_line.startswith(SHED) for t in uac.traces()):
            break
        time.sleep(0.5)
    assert res.ok, res.output
    assert uas.wait(10).ok


def calls_started(node: Daemon) -> set[str]:
    """Ids of the calls this node handled (its own log: the store is shared)."""
    ids = set()
    for line in node.log_text().splitlines():
        if '"call.started"' in line:
            ids.add(json.loads(line)["call"])
    return ids


def test_reservation_on_node_a_attributes_a_call_landing_on_node_b(
    cluster: Cluster, sipp_factory: Callable[..., Sipp]
) -> None:
    a, b = cluster.nodes
    for i in range(20):
        s = visitor(a, i)
        call_through(cluster, sipp_factory, s["number"], str(i))
        cdr = a.wait_call(by_did(s["number"]))
        att = cdr["attribution"]
        assert att["kind"] == "dynamic" and att["session"]["id"] == s["session_id"]
        assert att["session"]["utm_campaign"] == f"c{i}"
        assert cdr["caller"] == CALLER
        if cdr["id"] in calls_started(b):
            return
    raise AssertionError("Kamailio never chose node B in 20 calls")


# an entry of SIPp's -trace_msg file, headed by the local time it was sent or received
_ENTRY = re.compile(r"^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})\n"
                    r"(UDP message (?:sent|received)[^\n]*)\n\n(.*?)(?=^-{47} |\Z)", re.M | re.S)


@dataclass
class Outcome:
    at: float  # when SIPp sent its first INVITE
    completed: bool = False  # its BYE got 200
    final: str = ""  # the status line of the first final answer to its INVITE


def call_outcomes(messages: str) -> dict[str, Outcome]:
    """Call-ID -> how the call went, from SIPp's message trace: the carrier's own view."""
    calls: dict[str, Outcome] = {}
    for m in _ENTRY.finditer(messages):
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()  # local, as SIPp
        sent, text = "sent" in m[2], m[3]
        found = re.search(r"^Call-ID: *(\S+)", text, re.M | re.I)
        if found is None:
            continue
        cid = found[1]
        if sent and text.startswith("INVITE ") and cid not in calls:
            calls[cid] = Outcome(at)
        elif not sent and cid in calls and re.match(r"SIP/2\.0 [2-6]", text):
            cseq = re.search(r"^CSeq: *\d+ (\w+)", text, re.M | re.I)
            method = cseq[1] if cseq else ""
            if method == "INVITE" and not calls[cid].final:
                calls[cid].final = text.split("\n", 1)[0].strip()
            elif method == "BYE" and text.startswith("SIP/2.0 200"):
                calls[cid].completed = True
    return calls


def test_killing_node_a_under_load_loses_no_call_started_after_the_dispatcher_noticed(
    cluster: Cluster, sipp_factory: Callable[..., Sipp]
) -> None:
    a, b = cluster.nodes
    assert cluster.node_flags(a).startswith("A") and cluster.node_flags(b).startswith("A")
    reserved = visitor(a, 1)  # through node A's API, before it dies
    rate, seconds, kill_after = 20, 14, 4.0
    calls = rate * seconds
    pbx = sipp_factory("pbx", "uas_answer.xml", cluster.pbx, "-m", str(calls + 1),
                       "-timeout", "90s")
    # each step waits at most 10 s: a call A had answered when it died does not hang SIPp
    carrier = sipp_factory("carrier", "uac_call.xml", free_port(), "-s", STATIC,
                           "-m", str(calls), "-r", str(rate), "-d", "500",
                           "-recv_timeout", "10000", "-timeout", "60s",
                           remote=f"127.0.0.1:{cluster.port}")
    time.sleep(kill_after)
    before_kill = (len(calls_started(a)), len(calls_started(b)))
    a.stop(signal.SIGKILL)  # node A dies without a word
    killed = time.time()
    noticed = None
    while time.time() < killed + 15:  # a bounded wait: it takes about 2 s
        if not cluster.node_flags(a).startswith("A"):
            noticed = time.time()
            break
        time.sleep(0.05)
    assert noticed is not None, "the dispatcher never took node A out"
    took = noticed - killed
    res = carrier.wait(70)
    pbx.kill()
    outcomes = call_outcomes(carrier.messages())
    assert len(outcomes) == calls, (len(outcomes), res.output[-2000:])
    failed = sum(not o.completed for o in outcomes.values())
    assert failed == int(res.stats.get("FailedCall(C)", "-1")), res.stats  # parsed right
    in_progress = sum(not o.completed for o in outcomes.values() if o.at < killed)
    unnoticed = [o for o in outcomes.values() if killed <= o.at < noticed]
    after = [o for o in outcomes.values() if o.at >= noticed]
    # node B sheds INVITEs with 503 when its loop falls behind (on a busy machine): a call
    # refused so was never accepted, so it is not lost; every other call must complete
    shed = [o for o in after if not o.completed and o.final.startswith(SHED)]
    lost = [o.final or "no answer" for o in after
            if not o.completed and not o.final.startswith(SHED)]
    print(f"\nnode A killed under {rate} CPS: the dispatcher noticed after {took:.2f} s "
          f"(probes every {PING_INTERVAL} s, {PROBE_TIMEOUT:.0f} s to answer); calls before "
          f"the kill on (A, B): {before_kill}; failed: {in_progress} of those in progress "
          f"at the kill, {sum(not o.completed for o in unnoticed)} of {len(unnoticed)} "
          f"started before the dispatcher noticed, {len(lost)} of {len(after)} started "
          f"after ({len(shed)} more shed by node B under load)")
    assert before_kill[0] > 0 and before_kill[1] > 0, before_kill  # both nodes took calls
    assert len(after) >= rate * (seconds - kill_after - 6)
    assert not lost, f"{len(lost)} calls started after the dispatcher noticed failed: {lost}"
    shed_by_b = b.http("GET", "/metrics")[1]
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in str(shed_by_b).splitlines()
                  if line.startswith("calltrackd_shed_calls_total{"))
    assert len(shed) <= counted, (len(shed), counted)  # B's own sheds, none of Kamailio's
    # B took calls on its own (how many it shed depends on the machine's other load)
    assert len(after) - len(shed) >= rate, f"{len(shed)} of {len(after)} calls shed"
    # the visitor who got a number through node A is found by B, which now takes every call
    call_through(cluster, sipp_factory, reserved["number"], "reserved")
    cdr = b.wait_call(by_did(reserved["number"]))
    assert cdr["attribution"]["kind"] == "dynamic"
    assert cdr["attribution"]["session"]["id"] == reserved["session_id"]
    assert cdr["id"] in calls_started(b)


def test_kamcmd_reloads_the_node_list_without_a_restart(cluster: Cluster) -> None:
    a, b = cluster.nodes
    ds = cluster.log.parent / "dispatcher.list"
    ds.write_text(f"1 sip:127.0.0.1:{b.sip_port}\n")  # node A leaves the set
    cluster.kamcmd("dispatcher.reload")
    listing = cluster.kamcmd("dispatcher.list")
    assert f"sip:127.0.0.1:{b.sip_port}" in listing
    assert f"sip:127.0.0.1:{a.sip_port}" not in listing
    assert cluster.kamailio.poll() is None
