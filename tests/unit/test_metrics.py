"""calltrackd/metrics.py against the documented names, and the deploy/ files using them:
the Prometheus rules (checked and unit-tested with promtool), the example scrape config and
the Grafana dashboard. Renaming a metric breaks these tests until rules and dashboard follow.

promtool comes from the Debian package `prometheus` (the README's test command installs it);
these tests fail, not skip, without it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calltrackd.metrics import WEBHOOK_RESULTS, Metrics
from calltrackd.overload import LoopLagMonitor

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "calltrackd-rules.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "calltrackd-dashboard.json"
ALERTS_DOC = ROOT / "docs" / "operations-alerts.md"

# The documented metrics: exposed name → (type, labels)
SPEC = {
    "calltrackd_calls_total": ("counter", ("tracker", "outcome")),
    "calltrackd_active_calls": ("gauge", ()),
    "calltrackd_sip_messages_total": ("counter", ("direction", "kind")),
    "calltrackd_invite_seconds": ("histogram", ()),
    "calltrackd_pool_numbers": ("gauge", ("tracker", "pool", "state")),
    "calltrackd_reservations_total": ("counter", ("tracker", "kind")),
    "calltrackd_coverage_ratio": ("gauge", ("tracker",)),
    "calltrackd_webhook_deliveries_total": ("counter", ("result",)),
    "calltrackd_webhook_queue": ("gauge", ()),
}

# PromQL words that are not metric names
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "group", "count_values", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "abs", "absent", "absent_over_time", "clamp_min", "clamp_max",
    "vector", "scalar", "time", "timestamp", "label_replace", "label_join", "changes",
    "resets", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time",
    "predict_linear", "and", "or", "unless", "offset", "bool", "inf", "nan",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (Debian package `prometheus`): "
                    "run the README's test command (scripts/test)")
    return path


def run_promtool(*args: str, stdin: bytes | None = None) -> str:
    res = subprocess.run([promtool(), *args], input=stdin, capture_output=True, timeout=60)
    out = (res.stdout + res.stderr).decode(errors="replace")
    assert res.returncode == 0, out
    return out


# --- the exposition ---------------------------------------------------------------------


def exposed_names(m: Metrics) -> set[str]:
    """Every sample name the registry can expose, labelled or not."""
    names: set[str] = set()
    for fam in m.registry.collect():
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(fam.name)
    return names


def sample_text() -> str:
    m = Metrics()
    m.calls.labels("acme", "answered").inc()
    m.active_calls.set(1)
    m.sip_tap("in", b"INVITE sip:+74990000001@x SIP/2.0\r\n")
    m.sip_tap("out", b"SIP/2.0 503 Service Unavailable\r\n")
    m.invite_seconds.observe(0.0003)
    m.pool_numbers.labels("acme", "paid", "free").set(3)
    m.reservations.labels("acme", "dynamic").inc()
    m.coverage.labels("acme").set(0.95)
    m.webhook_queue.set(2)
    lag = LoopLagMonitor()
    lag.record(0.12, 1000.0)
    m.watch_loop(lag)
    return m.render().decode()


def test_every_spec_metric_is_exposed_with_its_type_and_labels() -> None:
    fams = {f.name: f for f in text_string_to_metric_families(sample_text())}
    for name, (kind, labels) in SPEC.items():
        fam = fams[name.removesuffix("_total")]
        assert fam.type == kind, name
        samples = [s for s in fam.samples if not s.name.endswith("_created")]
        assert samples, name
        for s in samples:
            assert set(labels) <= set(s.labels), (name, s.labels)
    assert "process_resident_memory_bytes" in fams
    assert "process_cpu_seconds" in fams


def test_exposition_passes_promtool_check_metrics() -> None:
    out = run_promtool("check", "metrics", stdin=sample_text().encode())
    assert out.strip() == "", out


def test_invite_buckets_start_below_a_millisecond() -> None:
    m = Metrics()
    m.invite_seconds.observe(0.0002)
    text = m.render().decode()
    les = [float(x) for x in re.findall(r'calltrackd_invite_seconds_bucket\{le="([^"]+)"\}', text)]
    assert les[0] <= 0.0001 and sum(1 for le in les if le < 0.001) >= 3
    assert les[-1] == float("inf") and max(le for le in les if le != float("inf")) >= 1.0


def test_webhook_results_are_declared_at_zero() -> None:
    text = Metrics().render().decode()
    for result in WEBHOOK_RESULTS:
        assert f'calltrackd_webhook_deliveries_total{{result="{result}"}} 0.0' in text
    assert set(WEBHOOK_RESULTS) == {"ok", "retry", "failed"}  # as documented


@pytest.mark.parametrize(("data", "kind"), [
    (b"INVITE sip:a@b SIP/2.0\r\n", "INVITE"),
    (b"ACK sip:a@b SIP/2.0\r\n", "ACK"),
    (b"SIP/2.0 100 Trying\r\n", "1xx"),
    (b"SIP/2.0 200 OK\r\n", "2xx"),
    (b"SIP/2.0 486 Busy Here\r\n", "4xx"),
    (b"SIP/2.0 503 Service Unavailable\r\n", "5xx"),
    (b"SIP/2.0 \xff\xfe garbage", "other"),  # bounded label values, no crash
    (b"SIP/2.0 ", "other"),
    (b"FOO sip:a@b SIP/2.0\r\n", "other"),
    (b"\r\n\r\n", "other"),
    (b"", "other"),
])
def test_sip_tap_kind(data: bytes, kind: str) -> None:
    m = Metrics()
    m.sip_tap("in", data)
    assert m.registry.get_sample_value(
        "calltrackd_sip_messages_total", {"direction": "in", "kind": kind}) == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.active_calls.set(3)
    assert b.registry.get_sample_value("calltrackd_active_calls") == 0


# --- PromQL in rules and dashboard --------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded series) names a PromQL expression reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)  # dashboard variables
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", e))
    return {w for w in words if w.lower() not in PROMQL_WORDS}


def rules_exprs() -> list[tuple[str, str]]:
    """(record or alert name, expr) from the rules file. A minimal reader for the shapes
    the file uses: `expr:` inline, or a folded block scalar indented below it."""
    lines = RULES.read_text().splitlines()
    out: list[tuple[str, str]] = []
    name = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- (?:record|alert): (\S+)", line)
        if m:
            name = m.group(1)
        m = re.match(r"(\s*)expr: ?(.*)$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in (">-", ">", "|", "|-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip()
                                          or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                out.append((name, " ".join(b for b in block if b)))
                continue
            out.append((name, value))
        i += 1
    return out


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record: (\S+)", RULES.read_text(), re.M))


def known_names() -> set[str]:
    return exposed_names(Metrics()) | recorded_names() | {"up"}


def test_rules_reference_only_exposed_metrics() -> None:
    exprs = rules_exprs()
    rules = re.findall(r"^\s*- (?:record|alert): ", RULES.read_text(), re.M)
    assert len(exprs) == len(rules) >= 10
    known = known_names()
    for name, expr in exprs:
        names = metric_names(expr)
        assert names, (name, expr)
        assert names <= known, (name, names - known)


def test_rules_have_annotations_and_severity() -> None:
    text = RULES.read_text()
    doc = ALERTS_DOC.read_text()
    alerts = re.findall(r"^\s*- alert: (\S+)", text, re.M)
    assert {"CalltrackdDown", "CalltrackdStoreDown", "CalltrackdCdrBacklog",
            "CalltrackdNoCalls", "CalltrackdSip5xxHigh", "CalltrackdPoolExhausted",
            "CalltrackdCoverageLow", "CalltrackdWebhookQueueGrowing",
            "CalltrackdWebhookFailures"} <= set(alerts)
    chunks = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    for alert, chunk in zip(alerts, chunks, strict=True):
        for key in ("severity:", "summary:", "description:", "runbook:"):
            assert key in chunk, (alert, key)
        anchor = alert.lower()
        assert f"#{anchor}\"" in chunk, alert
        assert re.search(rf"^## {alert}\b", doc, re.M), f"{alert} missing in {ALERTS_DOC.name}"


def test_promtool_check_rules_and_config() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out
    out = run_promtool("check", "config", str(PROMETHEUS_YML))
    assert "SUCCESS: 1 rule files found" in out


def strip_annotations(text: str) -> str:
    """The rules without their annotations: promtool test rules compares them whole."""
    out: list[str] = []
    skip_deeper_than: int | None = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def alert(name: str, time: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": time, "alertname": name,
            "exp_alerts": [{"exp_labels": labels} for labels in expected]}


A = {"job": "calltrackd", "instance": "a:8080"}
B = {"job": "calltrackd", "instance": "b:8080"}
C = {"job": "calltrackd", "instance": "c:8080"}
D = {"job": "calltrackd", "instance": "d:8080"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(strip_annotations(RULES.read_text()))
    warn, crit = {"severity": "warning"}, {"severity": "critical"}
    paid = {"tracker": "acme", "pool": "paid"}
    cases: dict[str, Any] = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {   # pools, coverage (NaN without visitors does not alert), store, backlog, down
            "interval": "1m",
            "input_series": [
                series("up", "1x40", **A), series("up", "0x40", **B),
                series("calltrackd_pool_numbers", "0x20", **A, **paid, state="free"),
                series("calltrackd_pool_numbers", "3x20", **A, tracker="acme", pool="web",
                       state="free"),
                series("calltrackd_coverage_ratio", "0.8x20", **A, tracker="acme"),
                series("calltrackd_coverage_ratio", " ".join(["NaN"] * 21), **A,
                       tracker="quiet"),
                series("calltrackd_coverage_ratio", "0.95x20", **A, tracker="big"),
                series("calltrackd_store_up", "1 1 0x10", **A),
                series("calltrackd_cdr_backlog", "0 0 0 5 10 15 20 25 30 35 40", **A),
            ],
            "alert_rule_test": [
                alert("CalltrackdPoolExhausted", "4m"),
                alert("CalltrackdPoolExhausted", "6m", {**warn, **A, **paid, "state": "free"}),
                alert("CalltrackdCoverageLow", "14m"),
                alert("CalltrackdCoverageLow", "16m", {**warn, **A, "tracker": "acme"}),
                alert("CalltrackdStoreDown", "3m"),
                alert("CalltrackdStoreDown", "5m", {**crit, **A}),
                alert("CalltrackdCdrBacklog", "7m"),
                alert("CalltrackdCdrBacklog", "9m", {**warn, **A}),
                alert("CalltrackdDown", "1m"),
                alert("CalltrackdDown", "3m", {**crit, **B}),
            ],
        },
        {   # calls: A busy, B silent with a counter, C never finished a call since start,
            # D silent but started at 20m
            "interval": "1m",
            "input_series": [
                *[series("up", "1x60", **n) for n in (A, B, C, D)],
                *[series("process_start_time_seconds", "0x60", **n) for n in (A, B, C)],
                series("process_start_time_seconds", "1200x60", **D),
                series("calltrackd_calls_total", "0+10x60", **A, tracker="t",
                       outcome="answered"),
                series("calltrackd_calls_total", "5x60", **B, tracker="t", outcome="answered"),
            ],
            "alert_rule_test": [
                alert("CalltrackdNoCalls", "20m"),
                alert("CalltrackdNoCalls", "33m"),
                alert("CalltrackdNoCalls", "40m", {**warn, **B}, {**warn, **C}),
            ],
        },
        {   # SIP: A answers 10% of INVITEs with 5xx, B 1%, C 50% of very few
            "interval": "1m",
            "input_series": [
                series("calltrackd_sip_messages_total", "0+600x30", **A, direction="in",
                       kind="INVITE"),
                series("calltrackd_sip_messages_total", "0+60x30", **A, direction="out",
                       kind="5xx"),
                series("calltrackd_sip_messages_total", "0+600x30", **B, direction="in",
                       kind="INVITE"),
                series("calltrackd_sip_messages_total", "0+6x30", **B, direction="out",
                       kind="5xx"),
                series("calltrackd_sip_messages_total", "0+0.5x30", **C, direction="in",
                       kind="INVITE"),
                series("calltrackd_sip_messages_total", "0+0.25x30", **C, direction="out",
                       kind="5xx"),
            ],
            "alert_rule_test": [
                alert("CalltrackdSip5xxHigh", "8m"),
                alert("CalltrackdSip5xxHigh", "20m", {**warn, **A}),
            ],
        },
        {   # webhooks: A's queue grows past 100, B's is large but shrinking
            "interval": "1m",
            "input_series": [
                series("calltrackd_webhook_queue", "50+10x40", **A),
                series("calltrackd_webhook_queue", "900-10x40", **B),
                series("calltrackd_webhook_deliveries_total", "0x5 1x30", **A, result="failed"),
                series("calltrackd_webhook_deliveries_total", "0x35", **B, result="failed"),
                series("calltrackd_webhook_deliveries_total", "0+1x35", **B, result="ok"),
                series("calltrackd_webhook_deliveries_total", "0+5x35", **A, result="retry"),
                series("calltrackd_webhook_deliveries_total", "0+1x35", **A, result="ok"),
            ],
            "alert_rule_test": [
                alert("CalltrackdWebhookQueueGrowing", "10m"),
                alert("CalltrackdWebhookQueueGrowing", "25m", {**warn, **A}),
                alert("CalltrackdWebhookFailures", "4m"),
                alert("CalltrackdWebhookFailures", "8m", {**warn, **A, "result": "failed"}),
                alert("CalltrackdWebhookFailures", "30m"),
                alert("CalltrackdWebhookRetrying", "32m", {"severity": "info", **A}),
            ],
        },
        {   # INVITE forwarding: p99 at 0.5 s on A, sub-millisecond on B
            "interval": "1m",
            "input_series": [
                *[series("calltrackd_invite_seconds_bucket", f"0+{n}x30", **A, le=le)
                  for le, n in (("0.001", 0), ("0.1", 0), ("1", 100), ("+Inf", 100))],
                *[series("calltrackd_invite_seconds_bucket", f"0+{n}x30", **B, le=le)
                  for le, n in (("0.001", 100), ("0.1", 100), ("1", 100), ("+Inf", 100))],
            ],
            "alert_rule_test": [
                alert("CalltrackdInviteLatencyHigh", "20m", {**warn, **A}),
            ],
        },
    ]}
    spec = tmp_path / "rules_test.json"  # JSON is YAML
    spec.write_text(json.dumps(cases, indent=1))
    out = run_promtool("test", "rules", str(spec))
    assert "SUCCESS" in out, out


# --- the dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard()) for t in p.get("targets", [])]


def test_dashboard_model() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41 and d["uid"] == "calltrackd"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    for p in panels(d):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_dashboard_shows_the_spec_metrics() -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for name, (kind, _) in SPEC.items():
        wanted = name + "_bucket" if kind == "histogram" else name
        assert wanted in used, name
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= used
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert "histogram_quantile(0.50" in exprs and "histogram_quantile(0.99" in exprs


def test_dashboard_references_only_exposed_metrics() -> None:
    known = known_names()
    for title, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= known, (title, names - known)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with the dashboard's variables
    replaced by what Grafana would put there."""
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        e = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        e = e.replace("$instance", ".*")
        assert "$" not in e, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run_promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_active_calls_is_the_engines_count_at_scrape_time() -> None:
    m = Metrics()
    calls = [object(), object()]
    m.count_active_calls(lambda: len(calls))
    assert m.registry.get_sample_value("calltrackd_active_calls") == 2
    calls.pop()
    assert m.registry.get_sample_value("calltrackd_active_calls") == 1


def test_owner_counted_figures_are_read_at_scrape_time_as_counters() -> None:
    m = Metrics()
    retransmissions = [0]
    m.sip_retransmissions.count = lambda: retransmissions[0]
    assert m.registry.get_sample_value("calltrackd_sip_retransmissions_total") == 0
    retransmissions[0] = 5
    assert m.registry.get_sample_value("calltrackd_sip_retransmissions_total") == 5
    assert m.registry.get_sample_value("calltrackd_overload_rejected_total") == 0
    families = {f.name: f.type for f in m.registry.collect()}
    assert families["calltrackd_sip_retransmissions"] == "counter"
