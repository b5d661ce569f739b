"""Hunt mode `simultaneous` on the fake link with the manual clock: every target rings at
once on a B leg of its own; the first 2xx wins and the others get CANCEL; a 6xx ends
them all; when all fail the caller gets the last final code; one ring timeout."""

from __future__ import annotations

import tomllib

from calltrackd.config import Settings, parse_config
from tests.unit.b2bua.net import CARRIER, DID, PBX_A, PBX_B, Net

A_URI, B_URI = f"sip:{PBX_A.host}:{PBX_A.port}", f"sip:{PBX_B.host}:{PBX_B.port}"


def config(hunt: str = "simultaneous", ring_timeout: str = "20s") -> Settings:
    return parse_config(tomllib.loads(f"""
[[carriers]]
name = "carrier"
addresses = ["{CARRIER.host}/32"]

[[trackers]]
id = "main"
public_key = "pk_main"
default_number = "{DID}"
forward = ["{A_URI}", "{B_URI}"]
ring_timeout = "{ring_timeout}"
hunt = "{hunt}"
"""))


def forked() -> Net:
    net = Net(config())
    net.carrier.invite()
    assert net.pbx_a.methods() == ["INVITE"] and net.pbx_b.methods() == ["INVITE"]
    a, b = net.pbx_a.last("INVITE"), net.pbx_b.last("INVITE")
    assert a.call_id != b.call_id  # a B leg (dialog) each
    return net


def test_second_phone_answers_and_the_first_gets_cancel() -> None:
    net = forked()
    net.pbx_a.respond(180)
    net.pbx_b.respond(180)  # the caller already rings: not relayed again
    assert net.carrier.statuses() == [100, 180]
    net.advance(3.0)
    net.pbx_b.respond(200)
    assert net.carrier.statuses() == [100, 180, 200]
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    assert len(net.pbx_b.acks) == 1
    net.advance(2.0)
    net.carrier.send("BYE")
    assert net.pbx_b.methods() == ["INVITE", "BYE"]
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.target, cdr.hangup_by) == ("answered", B_URI, "caller")
    assert (cdr.ring_seconds, cdr.talk_seconds) == (3.0, 2.0)
    assert net.hooks.kinds == ["started", "forwarded", "answered", "ended"]
    assert net.engine.active_calls == 0


def test_a_target_silent_until_the_answer_is_cancelled_on_its_first_provisional() -> None:
    net = forked()
    net.pbx_b.respond(200)  # pbx_a has sent nothing yet: its CANCEL waits (§9.1)
    assert "CANCEL" not in net.pbx_a.methods()
    net.pbx_a.respond(180)
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    assert net.carrier.statuses()[-1] == 200
    assert net.engine.active_calls == 1 and net.hooks.kinds[-1] == "answered"


def test_both_answer_the_loser_is_acked_and_hung_up() -> None:
    net = forked()
    net.pbx_a.respond(180)
    net.pbx_a.respond(200)
    net.pbx_b.respond(200)  # pbx_b had sent nothing: ACK and BYE
    assert net.carrier.statuses().count(200) == 1
    assert len(net.pbx_b.acks) == 1 and net.pbx_b.methods()[-1] == "BYE"
    assert net.engine.active_calls == 1  # the call with pbx_a stays up
    net.carrier.send("BYE")
    assert net.hooks.cdr.target == A_URI


def test_6xx_from_one_ends_all() -> None:
    net = forked()
    net.pbx_a.respond(180)
    net.pbx_b.respond(603)
    assert net.carrier.statuses()[-1] == 603
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("busy", 603, "callee")
    assert net.engine.active_calls == 0


def test_all_busy_gives_486_once_both_have_answered() -> None:
    net = forked()
    net.pbx_a.respond(486)
    assert net.carrier.statuses() == [100]  # pbx_b may still answer
    net.pbx_b.respond(486)
    assert net.carrier.statuses() == [100, 486]
    assert (net.hooks.cdr.outcome, net.hooks.cdr.sip_code) == ("busy", 486)
    assert "CANCEL" not in net.pbx_a.methods() + net.pbx_b.methods()


def test_one_ring_timeout_for_the_whole_fork() -> None:
    net = forked()
    net.pbx_a.respond(180)
    net.pbx_b.respond(183)
    net.advance(19.9)
    assert net.carrier.statuses() == [100, 180]
    net.advance(0.2)
    assert net.pbx_a.methods()[-1] == "CANCEL" and net.pbx_b.methods()[-1] == "CANCEL"
    assert net.carrier.statuses()[-1] == 480
    assert (net.hooks.cdr.outcome, net.hooks.cdr.hangup_by) == ("no_answer", "system")


def test_caller_cancel_cancels_every_target() -> None:
    net = forked()
    net.pbx_a.respond(180)
    net.pbx_b.respond(180)
    net.carrier.cancel()
    assert net.carrier.statuses()[-1] == 487
    assert net.pbx_a.methods()[-1] == "CANCEL" and net.pbx_b.methods()[-1] == "CANCEL"
    assert (net.hooks.cdr.outcome, net.hooks.cdr.hangup_by) == ("cancelled", "caller")


def test_sequential_stays_in_order() -> None:
    net = Net(config("sequential"))
    net.carrier.invite()
    assert net.pbx_a.methods() == ["INVITE"] and not net.pbx_b.requests
