"""Target health: the verdicts of `Health` on a manual clock, and the prober with the real
engine on the fake link (tests/unit/b2bua/net.py): a target that stops answering its
OPTIONS is left out of the hunt and put back when it answers again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, Gauge

from calltrackd.b2bua.health import Health, Probe, ProbePolicy, TargetProber, targets_of
from calltrackd.config import ConfigError, parse_config
from calltrackd.sip.endpoint import Address
from calltrackd.tracking.model import ForwardTarget
from tests.unit.b2bua.net import PBX_A, PBX_B, Net, settings

A, B = "sip:10.0.1.1:5060", "sip:10.0.1.2:5060"
POLICY = ProbePolicy(interval=10.0, timeout=2.0, failures=2)


def watched(*uris: str, policy: ProbePolicy = POLICY) -> Health:
    h = Health()
    h.configure({u: ("main",) for u in uris}, policy, 0.0)
    return h


def by_uri(probes: list[Probe]) -> dict[str, Probe]:
    return {p.uri: p for p in probes}


def test_two_failures_in_a_row_take_a_target_down_and_one_answer_brings_it_back() -> None:
    h = watched(A, B)
    first = by_uri(h.poll(0.0))
    assert set(first) == {A, B}  # new targets are probed at once
    h.answered(first[A], 200)
    h.answered(first[B], 200)
    assert h.poll(5.0) == [] and h.next_deadline() == 10.0
    second = by_uri(h.poll(10.0))
    h.answered(second[B], 200)
    assert h.next_deadline() == 12.0  # A's answer is awaited until then
    assert h.poll(12.0) == []  # A timed out: one failure, still up
    assert h.is_up(A) and h.changes == []
    third = by_uri(h.poll(20.0))
    h.answered(third[B], 200)
    h.poll(22.0)
    assert not h.is_up(A)
    (change,) = h.changes
    assert (change.uri, change.up, change.result, change.failures) == (A, False, "timeout", 2)
    h.changes.clear()
    ring = (ForwardTarget(A), ForwardTarget(B))
    assert h.usable(ring) == (ring[1],)
    h.answered(by_uri(h.poll(30.0))[A], 200)
    assert h.is_up(A) and h.usable(ring) == ring
    assert [(c.up, c.result) for c in h.changes] == [(True, "200")]


def test_when_every_target_is_down_all_are_tried_in_order() -> None:
    h = watched(A, B, policy=ProbePolicy(interval=10.0, timeout=2.0, failures=1))
    for p in h.poll(0.0):
        h.answered(p, 503)
    ring = (ForwardTarget(B), ForwardTarget(A))
    assert not h.is_up(A) and not h.is_up(B)
    assert h.usable(ring) == ring


def test_answers_that_count_as_up() -> None:
    plain = ProbePolicy(interval=1.0)
    assert plain.success(200) and plain.success(202)
    assert not plain.success(404) and not plain.success(503) and not plain.success(408)
    lenient = ProbePolicy(interval=1.0, up_codes=("4xx", "503"))
    assert lenient.success(404) and lenient.success(401) and lenient.success(503)
    assert not lenient.success(500) and not lenient.success(604)


def test_a_provisional_waits_and_a_late_answer_is_ignored() -> None:
    h = watched(A, policy=ProbePolicy(interval=10.0, timeout=2.0, failures=1))
    (p,) = h.poll(0.0)
    h.answered(p, 100)
    h.poll(2.0)  # timed out: down
    assert not h.is_up(A)
    h.answered(p, 200)  # the answer to a probe given up on decides nothing
    assert not h.is_up(A)


def test_failures_are_counted_in_a_row_only() -> None:
    h = watched(A, policy=ProbePolicy(interval=10.0, timeout=2.0, failures=2))
    for t, status in ((0.0, 503), (10.0, 200), (20.0, 503), (30.0, 200)):
        (p,) = h.poll(t)
        h.answered(p, status)
        assert h.is_up(A)
    (p,) = h.poll(40.0)
    h.failed(p, "unresolved: no address")
    (p,) = h.poll(50.0)
    h.answered(p, 500)
    assert not h.is_up(A) and h.changes[-1].result == "500"


def test_reload_keeps_verdicts_of_kept_targets_and_forgets_the_rest() -> None:
    h = watched(A, B, policy=ProbePolicy(interval=10.0, timeout=2.0, failures=1))
    for p in h.poll(0.0):
        h.answered(p, 503)
    h.configure({A: ("main", "other")}, h.policy, 5.0)
    assert not h.is_up(A) and h.is_up(B)  # B is no longer watched: unknown counts as up
    assert sorted(h.states()) == [("main", A, False), ("other", A, False)]
    h.configure({A: ("main",)}, ProbePolicy(), 6.0)  # probes off
    assert h.poll(6.0) == [] and h.next_deadline() is None
    assert h.is_up(A) and list(h.states()) == []


def test_targets_are_probed_once_per_uri() -> None:
    s = settings(A, B)
    other = settings(B).trackers[0]
    s = replace(s, trackers=(*s.trackers, replace(other, id="other",
                                                  default_number="+74990000002")))
    assert targets_of(s) == {A: ("main",), B: ("main", "other")}


def test_config_keys_and_their_problems() -> None:
    sip = parse_config({"sip": {"target_probe_interval": "30s", "target_probe_timeout": "3s",
                               "target_probe_failures": 3,
                               "target_probe_up_codes": ["404", "4xx"]}}).sip
    assert (sip.target_probe_interval, sip.target_probe_timeout, sip.target_probe_failures,
            sip.target_probe_up_codes) == (30.0, 3.0, 3, ("404", "4xx"))
    assert parse_config({}).sip.target_probe_interval == 0.0
    with pytest.raises(ConfigError) as err:
        parse_config({"sip": {"target_probe_interval": "soon", "target_probe_failures": 0,
                              "target_probe_up_codes": ["ok", "2xx"],
                              "target_probe_timeout": 0}})
    text = str(err.value)
    for key in ("sip.target_probe_interval", "sip.target_probe_failures",
                "sip.target_probe_up_codes[0]", "sip.target_probe_timeout"):
        assert key in text, text
    assert "target_probe_up_codes[1]" not in text


# -- the prober with the engine on the fake link -----------------------------------------


def probing_net() -> tuple[Net, TargetProber, Gauge, list[bool]]:
    dead = [False]
    config = settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060", target_probe_interval=2.0,
                      target_probe_timeout=1.0, target_probe_failures=2)

    def loss(data: bytes, dest: Address) -> bool:
        return dead[0] and dest == PBX_A

    net = Net(config, loss=loss)
    gauge = Gauge("calltrackd_target_up", "up", ["tracker", "target"],
                  registry=CollectorRegistry())
    prober = TargetProber(cast(Any, net.stack), lambda: net.config, gauge)
    net.engine.health = prober
    return net, prober, gauge, dead


def run(net: Net, prober: TargetProber, seconds: float) -> None:
    for _ in range(int(seconds / 0.5)):
        prober.tick()
        net.pump()
        net.advance(0.5)


def up(gauge: Gauge, target: str) -> float | None:
    for metric in gauge.collect():
        for s in metric.samples:
            if s.labels == {"tracker": "main", "target": target}:
                return s.value
    return None


def test_a_dead_target_is_skipped_and_taken_back_when_it_answers() -> None:
    net, prober, gauge, dead = probing_net()
    run(net, prober, 1.0)
    assert net.pbx_a.methods() == ["OPTIONS"] and net.pbx_b.methods() == ["OPTIONS"]
    assert up(gauge, A) == 1.0 and up(gauge, B) == 1.0
    dead[0] = True
    run(net, prober, 8.0)
    assert up(gauge, A) == 0.0 and up(gauge, B) == 1.0
    net.carrier.invite()
    assert "INVITE" not in net.pbx_a.methods()
    assert "INVITE" in net.pbx_b.methods()
    net.pbx_b.respond(486)  # the last usable target: the hunt ends there
    assert net.carrier.statuses()[-1] == 486
    dead[0] = False
    run(net, prober, 3.0)
    assert up(gauge, A) == 1.0
    net.carrier.invite()
    assert "INVITE" in net.pbx_a.methods()


def test_all_targets_down_the_call_still_tries_them_in_order() -> None:
    net, prober, gauge, _ = probing_net()
    net.loss = lambda data, dest: dest in (PBX_A, PBX_B) and data.startswith(b"OPTIONS")
    run(net, prober, 8.0)
    assert up(gauge, A) == 0.0 and up(gauge, B) == 0.0
    net.carrier.invite()
    assert "INVITE" in net.pbx_a.methods()  # the first, as configured


def test_a_reload_drops_the_series_of_targets_no_longer_configured() -> None:
    net, prober, gauge, _ = probing_net()
    run(net, prober, 1.0)
    assert up(gauge, A) == 1.0 and up(gauge, B) == 1.0
    net.config = settings(B, target_probe_interval=2.0)
    prober.tick()
    assert up(gauge, A) is None and up(gauge, B) == 1.0
    net.config = settings(B)  # probes off: no series at all
    prober.tick()
    assert up(gauge, B) is None


def test_targets_by_name_are_resolved_and_a_name_that_does_not_resolve_fails() -> None:
    net, prober, gauge, _ = probing_net()
    named, unknown = "sip:pbx-b.example:5060", "sip:nowhere.example:5060"
    net.config = settings(named, unknown, target_probe_interval=2.0,
                          target_probe_timeout=1.0, target_probe_failures=2)
    net.names["pbx-b.example"] = PBX_B.host
    prober.resolver = net.engine.resolver
    run(net, prober, 5.0)
    assert "OPTIONS" in net.pbx_b.methods()
    assert up(gauge, named) == 1.0 and up(gauge, unknown) == 0.0
