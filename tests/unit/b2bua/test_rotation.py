"""Hunt `round_robin`: the pure ordering (routing.py `rotated`, `rotates`, `rotation_key`),
the count with its node-local fallback (rotation.py, on a real event loop), and the
engine ringing each call's turn, on the fake link with two nodes sharing one count."""

from __future__ import annotations

import asyncio
import tomllib
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from calltrackd.b2bua.rotation import Rotation
from calltrackd.b2bua.routing import Route, rotated, rotates, rotation_key, with_answer
from calltrackd.config import ConfigError, Settings, parse_config
from calltrackd.store.base import StoreError
from calltrackd.tracking.model import ForwardTarget, Tracker
from tests.unit.b2bua.net import DID, Forever, Net
from tests.unit.b2bua.test_hunt_simultaneous import config as hunt_config

A, B, C = (ForwardTarget(f"sip:10.0.1.{i}:5060") for i in (1, 2, 3))
LETTER = {A.uri: "a", B.uri: "b", C.uri: "c"}
TRACKER = Tracker(id="main", public_key="pk_main", default_number=DID, forward=(A, B, C))


def route(*targets: ForwardTarget, hunt: str = "round_robin") -> Route:
    return Route(tracker=TRACKER, carrier="carrier", did=DID, caller="+79161234567",
                 targets=targets, ring_timeout=30.0, hunt=hunt)  # type: ignore[arg-type]


def names(r: Route) -> str:
    return "".join(LETTER[t.uri] for t in r.targets)


# --- the ordering ----------------------------------------------------------------------


def test_each_call_starts_one_target_further_and_fails_over_round_the_list() -> None:
    r = route(A, B, C)
    assert [names(rotated(r, n)) for n in range(1, 8)] == [
        "abc", "bca", "cab", "abc", "bca", "cab", "abc"]
    assert rotated(r, 1) is r  # the first call rings the list as configured
    assert names(rotated(r, 3_000_000_002)) == "bca"  # counts never run out


def test_only_a_round_robin_route_of_two_targets_or_more_rotates() -> None:
    assert rotates(route(A, B))
    assert not rotates(route(A))  # nothing to rotate: the store is not asked
    assert not rotates(route(A, B, hunt="sequential"))
    assert not rotates(route(A, B, hunt="simultaneous"))
    # the routing webhook chose the order: its answer is rung as it says
    assert not rotates(with_answer(route(A, B, C), (C, A), None, None))
    assert rotates(with_answer(route(A, B, C), None, None, "Alice"))  # no targets chosen
    assert rotates(route(A, B).replace(rule="routing_webhook"))  # a rule of that name


def test_the_rotation_key_is_the_tracker_and_its_target_list() -> None:
    key = rotation_key("main", (A, B))
    assert key.startswith("main:") and key == rotation_key("main", (A, B))
    assert rotation_key("main", (replace(A, username="u", password="p"), B)) == key  # URIs
    assert len({key, rotation_key("main", (B, A)), rotation_key("main", (A, B, C)),
                rotation_key("other", (A, B))}) == 4


# --- the count: the store's, else the node's own -------------------------------------


class Counter:
    """A store's rotation counters, as every backend keeps them (tests of the real ones:
    tests/unit/store/test_store_contract.py); `down` makes it fail, `slow` never answer."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.down = False
        self.slow = False

    async def rotate(self, key: str) -> int:
        if self.down:
            raise StoreError("redis: ConnectionError: refused")
        if self.slow:
            await asyncio.sleep(3600)
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


async def test_the_count_is_the_stores_and_the_nodes_own_while_it_fails() -> None:
    loop = asyncio.get_running_loop()
    store = Counter()
    node = Rotation(store.rotate, wait=lambda: 0.05)
    assert [await node.count(loop, "k") for _ in range(3)] == [1, 2, 3]
    store.down = True
    with capture_logs() as logs:
        assert [await node.count(loop, "k") for _ in range(3)] == [4, 5, 6]
        assert await node.count(loop, "other") == 1
    # one line for the outage (rate-limited), naming what failed
    [line] = [e for e in logs if e["event"] == "b2bua.rotation_local"]
    assert line["log_level"] == "warning" and "refused" in line["error"]
    assert (line["key"], line["calls"]) == ("k", 1)
    assert node.local == 4
    store.down = False
    assert await node.count(loop, "k") == 4  # the store's count again


async def test_a_slow_store_costs_the_call_the_wait_only() -> None:
    loop = asyncio.get_running_loop()
    store = Counter()
    node = Rotation(store.rotate, wait=lambda: 0.05)
    assert await node.count(loop, "k") == 1
    store.slow = True
    with capture_logs() as logs:
        assert await node.count(loop, "k") == 2
    assert [e["error"] for e in logs if e["event"] == "b2bua.rotation_local"] == [
        "TimeoutError"]


async def test_route_hands_on_the_route_at_its_turn() -> None:
    store = Counter()
    node = Rotation(store.rotate)
    got: list[str] = []
    done = asyncio.Event()

    def then(r: Route) -> None:
        got.append(names(r))
        done.set()

    for _ in range(4):
        done.clear()
        node.route(asyncio.get_running_loop(), route(A, B, C), then)
        await asyncio.wait_for(done.wait(), 5)
    assert got == ["abc", "bca", "cab", "abc"]
    assert list(store.counts) == [rotation_key("main", (A, B, C))]


@pytest.mark.parametrize(("value", "wait", "problem"), [
    (None, 0.1, None), ('"250ms"', 0.25, None), ('"1s"', 1.0, None),
    ('"2s"', None, 'use at most "1s"'), ("0", None, "must be more than 0")])
def test_the_stores_wait_is_100ms_unless_set_and_at_most_a_second(
        value: str | None, wait: float | None, problem: str | None) -> None:
    text = "[store]\n" + (f"rotation_wait = {value}\n" if value else "")
    try:
        assert parse_config(tomllib.loads(text)).store.rotation_wait == wait
    except ConfigError as exc:
        [line] = exc.problems
        assert problem is not None and line.startswith("store.rotation_wait: ") \
            and problem in line, line


# --- in the engine: two nodes, one count ------------------------------------------------


class SharedCount(Rotation):
    """The real Rotation with its count taken from a dict two engines share, without the
    store's bound (the fake loop runs a task at once; the bound is tested above)."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__(Counter().rotate)
        self.counts = counts

    async def count(self, loop: asyncio.AbstractEventLoop, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]


def config(hunt: str = "round_robin") -> Settings:
    return hunt_config(hunt)  # two targets: PBX_A's, PBX_B's


def test_two_nodes_sharing_the_count_hand_calls_to_the_targets_in_turn() -> None:
    counts: dict[str, int] = {}
    nodes = [Net(config()), Net(config())]
    for n in nodes:
        n.engine.rotation = SharedCount(counts)
    rang = []
    for i in range(6):
        net = nodes[i % 2]  # the calls come to the nodes in turn
        net.carrier.invite()
        a, b = len(net.pbx_a.requests), len(net.pbx_b.requests)
        (net.pbx_a if a > b else net.pbx_b).respond(200)
        rang.append("a" if a > b else "b")
    assert rang == ["a", "b", "a", "b", "a", "b"]
    assert [len(n.pbx_a.requests) + len(n.pbx_b.requests) for n in nodes] == [3, 3]


def test_a_busy_target_passes_the_call_on_down_the_rotated_list() -> None:
    net = Net(config())
    net.engine.rotation = SharedCount({})
    net.carrier.invite()
    net.pbx_a.respond(200)  # call 1: a first
    net.carrier.invite()  # call 2: b first, then a
    assert [r.method for r in net.pbx_b.requests] == ["INVITE"]
    net.pbx_b.respond(486)
    assert [r.method for r in net.pbx_a.requests if r.method == "INVITE"] == [
        "INVITE", "INVITE"]
    net.pbx_a.respond(200)
    assert net.carrier.statuses()[-1] == 200


def test_sequential_asks_no_count() -> None:
    counts: dict[str, int] = {}
    net = Net(config("sequential"))
    net.engine.rotation = SharedCount(counts)
    for _ in range(2):
        net.carrier.invite()
        net.pbx_a.respond(200)
    assert not net.pbx_b.requests and counts == {}


class NeverCounts(Rotation):
    async def count(self, loop: asyncio.AbstractEventLoop, key: str) -> int:
        await Forever()
        raise AssertionError("never answers")


def test_a_caller_who_gives_up_while_the_turn_is_counted_gets_487() -> None:
    net = Net(config())
    net.stack.loop.parking = True
    net.engine.rotation = NeverCounts(Counter().rotate)
    net.carrier.invite()
    assert net.engine.active_calls == 1 and net.stack.loop.parked
    net.carrier.cancel()
    assert net.carrier.statuses()[-1] == 487
    assert not net.pbx_a.requests and not net.pbx_b.requests
    assert net.hooks.kinds == ["started", "ended"] and net.engine.active_calls == 0


@pytest.mark.parametrize("count", [0, -1])
def test_odd_counts_still_name_a_target(count: int) -> None:
    assert len(rotated(route(A, B, C), count).targets) == 3
