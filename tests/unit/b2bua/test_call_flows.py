"""Every call flow through the real engine, calls and transaction layers, on a fake link
with a manual clock (tests/unit/b2bua/net.py): what the caller and the targets receive,
and the CDR the hooks get."""

from __future__ import annotations

from tests.unit.b2bua.net import CALLER, DID, PBX_SDP, SDP, Net


def test_answered_call_caller_hangs_up() -> None:
    net = Net()
    net.carrier.invite()
    assert net.carrier.statuses() == [100]
    invite = net.pbx_a.last("INVITE")
    assert invite.uri.startswith(f"sip:{DID}@10.0.1.1")
    assert f"sip:{CALLER}@" in (invite.headers.get("From") or "")
    assert invite.body == SDP
    net.pbx_a.respond(180)
    net.pbx_a.respond(200)
    assert net.carrier.statuses() == [100, 180, 200]
    assert net.carrier.responses[-1].body == PBX_SDP
    assert len(net.pbx_a.acks) == 1
    net.advance(2.0)
    net.carrier.send("BYE")
    assert net.carrier.statuses("BYE") == [200]
    assert net.pbx_a.methods()[-1] == "BYE"
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("answered", 200, "caller")
    assert cdr.talk_seconds == 2.0
    assert net.hooks.kinds == ["started", "forwarded", "answered", "ended"]
    assert net.engine.active_calls == 0
