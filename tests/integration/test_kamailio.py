"""Several calltrackd nodes behind Kamailio's dispatcher (deploy/kamailio/kamailio.cfg):
calls spread over the nodes by Call-ID, and losing a node loses no new calls."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Daemon, Sipp, free_port, start_daemon
from .test_calls import DID_MAIN, config

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"


@dataclass
class Cluster:
    kamailio: subprocess.Popen[bytes]
    port: int
    nodes: list[Daemon]
    pbx: int
    log: Path


def start_kamailio(tmp: Path, port: int, nodes: list[int]) -> tuple[subprocess.Popen[bytes], Path]:
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(binary).exists():
        pytest.fail("kamailio is not installed: run the README's test command (scripts/test)")
    ds = tmp / "dispatcher.list"
    ds.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in nodes))
    run = tmp / "run"
    run.mkdir()
    log = tmp / "kamailio.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-f", str(CFG), "-DD", "-E", "-Y", str(run), "-m", "64", "-M", "8",
             "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DS_LIST="{ds}"',
             "-A", "PING_INTERVAL=1"],
            stdout=out, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise AssertionError(f"kamailio exited: {log.read_text()[-2000:]}")
    return proc, log


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    pbx = free_port()
    nodes = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        sip, http = free_port(), free_port()
        nodes.append(start_daemon(d, config(sip, http, pbx, free_port(), "udp"), sip, http))
    port = free_port()
    proc, log = start_kamailio(tmp_path, port, [n.sip_port for n in nodes])
    yield Cluster(proc, port, nodes, pbx, log)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    for n in nodes:
        n.stop(signal.SIGKILL)


def calls_through(cluster: Cluster, sipp_factory: Callable[..., Sipp], n: int,
                  name: str) -> None:
    pbx = sipp_factory(f"pbx_{name}", "uas_answer.xml", cluster.pbx, "-m", str(n),
                       "-timeout", "60s")
    res = sipp_factory(f"carrier_{name}", "uac_call.xml", free_port(), "-s", DID_MAIN, "-m",
                       str(n), "-r", "10", "-d", "200", "-timeout", "60s", "-timeout_error",
                       remote=f"127.0.0.1:{cluster.port}").wait(90)
    assert res.ok, res.output
    assert int(res.stats.get("FailedCall(C)", "0")) == 0
    assert int(res.stats.get("SuccessfulCall(C)", "0")) == n
    assert pbx.wait(20).ok


def test_calls_spread_over_nodes_and_survive_losing_one(
    cluster: Cluster, sipp_factory: Callable[..., Sipp]
) -> None:
    calls_through(cluster, sipp_factory, 20, "both")
    a, b = cluster.nodes
    on_a, on_b = len(a.calls(limit="100")), len(b.calls(limit="100"))
    assert on_a + on_b == 20
    assert on_a > 0 and on_b > 0, (on_a, on_b)  # Call-ID hashing used both nodes
    a.stop(signal.SIGKILL)  # node A dies without a word
    time.sleep(2.5)  # the dispatcher's OPTIONS probe notices
    calls_through(cluster, sipp_factory, 10, "after")
    assert len(b.calls(limit="100")) == on_b + 10
