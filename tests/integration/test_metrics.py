"""GET /metrics after real traffic: SIPp calls (answered, busy, failed), visitor sessions and
webhook deliveries through the daemon as a process. The exposition must parse with
prometheus_client's own parser and pass `promtool check metrics`, and carry every documented
name with its labels and values that match the traffic."""

from __future__ import annotations

import math
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .conftest import (
    LOOPBACK,
    Daemon,
    Receiver,
    Sipp,
    daemon_toml,
    free_port,
    need,
    pbx_uri,
    start_daemon,
    tracker,
)

STATIC = "+74990000100"
POOL = ["+74990000001", "+74990000002"]
DEFAULT = "+74990000000"

# The documented metrics: name → (type, labels). Names are stable; labels may grow,
# so these are a minimum.
SPEC = {
    "calltrackd_calls_total": ("counter", {"tracker", "outcome"}),
    "calltrackd_active_calls": ("gauge", set()),
    "calltrackd_sip_messages_total": ("counter", {"direction", "kind"}),
    "calltrackd_invite_seconds": ("histogram", set()),
    "calltrackd_pool_numbers": ("gauge", {"tracker", "pool", "state"}),
    "calltrackd_reservations_total": ("counter", {"tracker", "kind"}),
    "calltrackd_coverage_ratio": ("gauge", {"tracker"}),
    "calltrackd_webhook_deliveries_total": ("counter", {"result"}),
    "calltrackd_webhook_queue": ("gauge", set()),
    "calltrackd_store_up": ("gauge", set()),
    "calltrackd_build_info": ("gauge", {"version", "python", "sip_core"}),
}


def config(sip: int, http: int, pbx: int, hook: str) -> str:
    return daemon_toml(
        sip, http, tracker(
            "acme", DEFAULT, pbx_uri(pbx), ring_timeout="20s",
            pools=[{"name": "paid", "sources": ["google/cpc"], "numbers": POOL}],
            static=[{"number": STATIC, "channel": "billboard"}],
            webhooks=[{"url": hook, "secret": "whsec_metrics",
                       "events": ["call.started", "call.answered", "call.ended"]}]),
        sip={"max_call_duration": "1h", "shutdown_grace": "5s"},
        http={"session_rate_limit": 0}, log={"level": "info", "format": "json"},
        carriers=[{**LOOPBACK, "did_from": "ruri"}])


@dataclass
class Scrape:
    daemon: Daemon
    receiver: Receiver
    text: str
    content_type: str
    families: dict[str, Metric]

    def family(self, name: str) -> Metric:
        """A family by its exposed name (the parser drops a counter's `_total`)."""
        return self.families[name.removesuffix("_total")]

    def value(self, sample: str, **labels: str) -> float:
        fam = self.family(sample.removesuffix("_bucket").removesuffix("_count")
                          .removesuffix("_sum"))
        for s in fam.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
        raise AssertionError(f"no sample {sample}{labels} in {fam.samples}")


def get_metrics(daemon: Daemon) -> tuple[str, str]:
    with urllib.request.urlopen(f"{daemon.base}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode(), resp.headers["Content-Type"]


def parse(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def call(tmp: Path, daemon: Daemon, n: int, did: str, pbx_port: int, uas_xml: str,
         uac_xml: str, *uac_args: str) -> None:
    pbx = Sipp(tmp, f"pbx{n}", uas_xml, pbx_port, "-m", "1", "-timeout", "30s")
    try:
        carrier = Sipp(tmp, f"carrier{n}", uac_xml, free_port(), "-s", did, "-m", "1",
                       "-timeout", "30s", "-timeout_error", *uac_args,
                       remote=f"127.0.0.1:{daemon.sip_port}")
        res = carrier.wait(40)
        assert res.ok, res.output
        assert pbx.wait(10).ok
    finally:
        pbx.kill()


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    need("sipp")
    tmp = tmp_path_factory.mktemp("metrics")
    receiver = Receiver(free_port())
    receiver.start()
    sip, http, pbx = free_port(), free_port(), free_port()
    daemon = start_daemon(tmp, config(sip, http, pbx, receiver.url), sip, http)
    try:
        # three visitors from google/cpc on a pool of two: two dynamic numbers, one default
        reserved: list[str] = []
        for i in range(3):
            status, answer = daemon.http("POST", "/v1/sessions", {
                "tracker": "pk_acme", "utm_source": "google", "utm_medium": "cpc",
                "client_id": f"GA1.2.{i}.1"}, admin=False)
            assert status == 200, answer
            reserved.append(answer["number"])
        assert sorted(reserved[:2]) == POOL and reserved[2] == DEFAULT, reserved
        dynamic = reserved[0]
        # four calls, one after another: answered (static, dynamic), busy, failed
        call(tmp, daemon, 1, STATIC, pbx, "uas_answer.xml", "uac_call.xml", "-d", "200")
        call(tmp, daemon, 2, dynamic, pbx, "uas_answer.xml", "uac_call.xml", "-d", "200")
        call(tmp, daemon, 3, STATIC, pbx, "uas_486.xml", "uac_expect_486.xml")
        call(tmp, daemon, 4, STATIC, pbx, "uas_503.xml", "uac_expect_503.xml")
        # every CDR written and every webhook delivered before the final scrape
        deadline = time.monotonic() + 30
        while True:
            cdrs = [c for c in daemon.calls(limit="10") if c["outcome"] is not None]
            text, ctype = get_metrics(daemon)
            fams = parse(text)
            queue = fams["calltrackd_webhook_queue"].samples[0].value
            if len(cdrs) == 4 and queue == 0 and len(receiver.events("call.ended")) == 4:
                break
            assert time.monotonic() < deadline, (cdrs, queue, receiver.received)
            time.sleep(0.2)
        assert sorted(c["outcome"] for c in cdrs) == ["answered", "answered", "busy", "failed"]
        yield Scrape(daemon, receiver, text, ctype, fams)
    finally:
        rc = daemon.stop()
        receiver.stop()
    assert rc == 0, daemon.log_text()[-3000:]


def test_content_type_and_promtool_check(scrape: Scrape) -> None:
    assert scrape.content_type.startswith("text/plain; version=")  # the Prometheus text format
    promtool = need("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=scrape.text.encode(),
                         capture_output=True, timeout=30)
    assert res.returncode == 0, (res.stdout + res.stderr).decode()
    assert (res.stdout + res.stderr).strip() == b"", (res.stdout + res.stderr).decode()


def test_every_spec_metric_has_its_type_and_labels(scrape: Scrape) -> None:
    for name, (kind, labels) in SPEC.items():
        fam = scrape.family(name)
        assert fam.type == kind, (name, fam.type)
        samples = [s for s in fam.samples if not s.name.endswith("_created")]
        assert samples, f"{name} has no samples"
        for s in samples:
            extra = {"le"} if s.name.endswith("_bucket") else set()
            assert set(s.labels) >= labels | extra, (name, s)
            if kind == "counter":
                assert s.name == name, s.name  # counters end in _total


def test_calls_by_tracker_and_outcome(scrape: Scrape) -> None:
    calls = {(s.labels["tracker"], s.labels["outcome"]): s.value
             for s in scrape.family("calltrackd_calls_total").samples
             if s.name == "calltrackd_calls_total"}
    assert calls == {("acme", "answered"): 2, ("acme", "busy"): 1, ("acme", "failed"): 1}
    assert scrape.value("calltrackd_active_calls") == 0


def test_sip_messages_by_direction_and_kind(scrape: Scrape) -> None:
    def v(direction: str, kind: str) -> float:
        return scrape.value("calltrackd_sip_messages_total", direction=direction, kind=kind)

    assert v("in", "INVITE") >= 4  # retransmissions over UDP may add to these
    assert v("out", "INVITE") >= 4
    assert v("in", "ACK") >= 2 and v("out", "ACK") >= 2
    assert v("in", "BYE") >= 2 and v("out", "BYE") >= 2
    assert v("in", "2xx") >= 2 and v("out", "2xx") >= 2
    assert v("in", "4xx") >= 1 and v("out", "4xx") >= 1  # the 486 relayed
    assert v("in", "5xx") >= 1 and v("out", "5xx") >= 1  # the 503 relayed
    assert v("out", "1xx") >= 4  # 100 Trying at least


def test_invite_histogram_counts_forwarded_invites(scrape: Scrape) -> None:
    fam = scrape.family("calltrackd_invite_seconds")
    buckets = [(float(s.labels["le"]), s.value) for s in fam.samples
               if s.name == "calltrackd_invite_seconds_bucket"]
    les = [le for le, _ in buckets]
    assert les == sorted(les) and les[0] <= 0.0001 and les[-1] == math.inf
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)  # cumulative
    # one forward per call: a single target each, no failover
    assert scrape.value("calltrackd_invite_seconds_count") == 4 == counts[-1]
    assert 0 < scrape.value("calltrackd_invite_seconds_sum") < 4.0


def test_pools_reservations_and_coverage(scrape: Scrape) -> None:
    pool = {s.labels["state"]: s.value for s in scrape.family("calltrackd_pool_numbers").samples
            if (s.labels["tracker"], s.labels["pool"]) == ("acme", "paid")}
    assert pool == {"free": 0, "reserved": 2, "cooling": 0}
    assert scrape.value("calltrackd_reservations_total", tracker="acme", kind="dynamic") == 2
    assert scrape.value("calltrackd_reservations_total", tracker="acme", kind="default") == 1
    assert scrape.value("calltrackd_coverage_ratio", tracker="acme") == pytest.approx(2 / 3)


def test_webhook_deliveries_and_queue(scrape: Scrape) -> None:
    delivered = len(scrape.receiver.received)
    r = scrape.receiver
    assert len(r.events("call.ended")) == 4 and len(r.events("call.answered")) == 2
    assert delivered == len(r.events("call.started")) + 2 + 4
    assert scrape.value("calltrackd_webhook_deliveries_total", result="ok") == delivered
    assert scrape.value("calltrackd_webhook_deliveries_total", result="retry") == 0
    assert scrape.value("calltrackd_webhook_deliveries_total", result="failed") == 0
    assert scrape.value("calltrackd_webhook_queue") == 0


def test_process_and_operational_metrics(scrape: Scrape) -> None:
    assert scrape.value("process_resident_memory_bytes") > 1_000_000
    assert scrape.value("process_cpu_seconds_total") > 0
    assert scrape.value("process_open_fds") > 0
    assert scrape.value("calltrackd_store_up") == 1
    assert scrape.value("calltrackd_cdr_backlog") == 0


def test_webhook_results_declared_before_any_delivery(tmp_path: Path) -> None:
    """A fresh daemon declares the delivery counter with its three results at 0, so
    rate() and the alert rules see the series from the first scrape."""
    sip, http = free_port(), free_port()
    daemon = start_daemon(tmp_path, config(sip, http, free_port(), "http://127.0.0.1:9/h"),
                          sip, http)
    try:
        fams = parse(get_metrics(daemon)[0])
    finally:
        assert daemon.stop() == 0
    results = {s.labels["result"]: s.value for s in
               fams["calltrackd_webhook_deliveries"].samples
               if s.name == "calltrackd_webhook_deliveries_total"}
    assert results == {"ok": 0, "retry": 0, "failed": 0}
    assert fams["calltrackd_calls"].type == "counter"  # declared, no samples before a call
    assert fams["calltrackd_invite_seconds"].type == "histogram"
