"""Hunt mode `round_robin` end to end: two calltrackd daemons on one real redis-server,
two SIPp PBXes, SIPp carrier calls coming to the nodes in turn. The nodes share the
rotation's count through Redis, so the PBXes take the calls in turn too (with a count of
each node's own, both nodes would start at the first PBX: a, a, b, b, ...). With Redis
gone, calls still go through on the node's own count."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import conftest as harness
from .conftest import Daemon, Redis, Sipp, free_port, pbx_uri
from .test_calls import forwarded_call_ids
from .test_redis_nodes import all_calls

DID = "+74990000091"
CALLS = 8


def node(tmp: Path, name: str, redis: Redis, pbxes: tuple[int, int]) -> Daemon:
    sip, http = free_port(), free_port()
    home = tmp / name
    home.mkdir()
    text = harness.daemon_toml(
        sip, http, harness.tracker("acme", DID, *(pbx_uri(p) for p in pbxes),
                                   hunt="round_robin"),
        store=redis.url, log={"level": "info", "format": "json"})
    # the store's wait is raised from 0.1 s: a machine loaded by other work must not make
    # a node count alone (which it would do correctly, but out of turn with the other)
    text = text.replace(f'url = "{redis.url}"', f'url = "{redis.url}"\nrotation_wait = "1s"')
    return harness.start_daemon(home, text, sip, http)


def call(sipp_factory: Callable[..., Sipp], daemon: Daemon, name: str) -> None:
    res = sipp_factory(name, "uac_call.xml", free_port(), "-s", DID, "-m", "1", "-d", "100",
                       "-timeout", "30s", "-timeout_error",
                       remote=f"127.0.0.1:{daemon.sip_port}").wait(60)
    assert res.ok, res.output


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for line in daemon.log_text().splitlines() if line.startswith("{")
            for e in [json.loads(line)] if e.get("event") == name]


def test_round_robin_across_two_nodes_on_one_redis(
        tmp_path: Path, redis: Redis, sipp_factory: Callable[..., Sipp]) -> None:
    pbxes = (free_port(), free_port())
    first, second = (pbx_uri(p) for p in pbxes)
    # each PBX answers its half, the second one more call (the last, without Redis)
    phones = [sipp_factory(f"pbx{i}", "uas_answer.xml", port, "-m", str(calls),
                           "-timeout", "300s")
              for i, (port, calls) in enumerate(zip(pbxes, (CALLS // 2, CALLS // 2 + 1),
                                                    strict=True))]
    nodes = [node(tmp_path, "a", redis, pbxes), node(tmp_path, "b", redis, pbxes)]
    try:
        for i in range(CALLS):  # one after the other, to node a, b, a, b, ...
            call(sipp_factory, nodes[i % 2], f"carrier{i}")
        records = sorted((c for c in all_calls(nodes[0]) if c["did"] == DID),
                         key=lambda c: c["started_at"])
        assert [c["outcome"] for c in records] == ["answered"] * CALLS
        assert [c["target"] for c in records] == [first, second] * (CALLS // 2)
        assert not any(events(n, "b2bua.rotation_local") for n in nodes)

        redis.kill()  # the store away: the call goes on the node's own count
        call(sipp_factory, nodes[0], "carrier_without_redis")
        [fallback] = events(nodes[0], "b2bua.rotation_local")
        assert fallback["calls"] == 1 and fallback["key"].startswith("acme:")
        # node a saw count 7 last (its 4th call): it counts this call 8th, the second
        # PBX's turn (the 9th of the shared count would have been the first PBX's)
        for phone in phones:
            done = phone.wait(60)
            assert done.ok, done.output
        ids = [forwarded_call_ids(phone) for phone in phones]
        for uri, got in zip((first, second), ids, strict=True):
            assert got[:CALLS // 2] == [c["id"] for c in records if c["target"] == uri]
        assert [len(got) for got in ids] == [CALLS // 2, CALLS // 2 + 1]
        redis.start()  # back (its AOF kept what it acknowledged): the last record lands
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0, 0], [n.log_text()[-3000:] for n in nodes]
