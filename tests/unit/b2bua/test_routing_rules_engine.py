"""The routing rules wired into the engine (on the fake link with the manual clock): a
schedule rule switches the target at its boundary, and rules that ask about the visitor
wait for the attribution (briefly) before the hunt."""

from __future__ import annotations

import datetime as dt
import tomllib

from calltrackd.config import Settings, parse_config
from calltrackd.tracking.model import Attribution, Tracker, VisitorSession
from tests.unit.b2bua.net import CARRIER, DID, PBX_A, PBX_B, Net

TOML = f"""
[[carriers]]
name = "carrier"
addresses = ["{CARRIER.host}/32"]

[[trackers]]
id = "main"
public_key = "pk_main"
default_number = "{DID}"
timezone = "Europe/Berlin"
forward = [{{uri = "sip:{PBX_A.host}:{PBX_A.port}", name = "day"}},
           {{uri = "sip:{PBX_B.host}:{PBX_B.port}", name = "night"}}]

  [[trackers.routes]]
  name = "{{name}}"
  {{condition}}
  forward = ["night"]
  ring_timeout = "12s"
"""


def config(name: str, condition: str) -> Settings:
    return parse_config(tomllib.loads(TOML.replace("{name}", name)
                                      .replace("{condition}", condition)))


def at(net: Net, when: dt.datetime) -> None:
    """The engine's wall clock reads `when` at the manual clock's present."""
    base, t0 = when.timestamp(), net.clock.now
    net.engine.wall = lambda: base + (net.clock.now - t0)


def test_schedule_rule_switches_target_at_its_boundary() -> None:
    net = Net(config("evening", 'hours = ["18:00-09:00"]'))
    # 17:59:59 in Berlin (UTC+1 in December): the day target
    at(net, dt.datetime(2026, 12, 1, 16, 59, 59, tzinfo=dt.UTC))
    net.carrier.invite()
    assert len(net.pbx_a.requests) == 1 and not net.pbx_b.requests
    net.pbx_a.respond(603)  # a 6xx ends the hunt: the fallback's second target stays idle
    # one second later, 18:00:00: the rule's target, with the rule's ring timeout
    net.advance(1.0)
    net.carrier.invite()
    assert [r.method for r in net.pbx_b.requests] == ["INVITE"]
    assert len(net.pbx_a.requests) == 1
    net.pbx_b.respond(180)
    net.advance(11.9)
    assert net.pbx_b.methods() == ["INVITE"]
    net.advance(0.2)  # 12 s: the ring timeout gives up on the only target
    assert "CANCEL" in net.pbx_b.methods()
    started = [c for k, c in net.hooks.seen if k == "forwarded"]
    assert [c.target for c in started] == [f"sip:{PBX_A.host}:{PBX_A.port}",
                                           f"sip:{PBX_B.host}:{PBX_B.port}"]


def paid(source: str) -> Attribution:
    return Attribution(kind="dynamic", session=VisitorSession(
        id="s1", tracker="main", source=source, medium="cpc", channel="paid"))


def test_rule_on_the_visitor_waits_for_the_attribution() -> None:
    net = Net(config("ads", 'source = ["google/cpc"]'))
    asked: list[tuple[str, str]] = []

    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        asked.append((did, caller))
        return paid("google" if len(asked) == 1 else "yandex"), True

    net.engine.attribute = attribute
    net.carrier.invite()
    assert net.pbx_b.methods() == ["INVITE"] and not net.pbx_a.requests
    info = net.hooks.seen[0][1]
    assert info.extra["attribution"].session.source == "google"  # the record reuses it
    assert info.extra["first_time_caller"] is True
    net.pbx_b.respond(603)
    net.carrier.invite()  # another visitor's call: the fallback
    assert net.pbx_a.methods() == ["INVITE"]
    assert asked == [(DID, "+79161234567")] * 2


def test_failing_attribution_routes_by_the_rest_of_the_rules() -> None:
    net = Net(config("ads", 'source = ["google/cpc"]'))

    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        raise ConnectionError("store down")

    net.engine.attribute = attribute
    net.carrier.invite()
    assert net.pbx_a.methods() == ["INVITE"]
    assert "attribution" not in net.hooks.seen[0][1].extra  # the recorder tries again


def test_rules_without_visitor_conditions_do_not_ask_tracking() -> None:
    net = Net(config("mobile", 'caller_prefix = ["+7916"]'))

    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        raise AssertionError("routing must not wait for tracking here")

    net.engine.attribute = attribute
    net.carrier.invite()
    assert net.pbx_b.methods() == ["INVITE"]
