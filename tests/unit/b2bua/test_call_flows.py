"""Every call flow through the real engine, calls and transaction layers, on a fake link
with a manual clock (tests/unit/b2bua/net.py): what the caller and the targets receive,
and the CDR the hooks get."""

from __future__ import annotations

import itertools

import pytest
import structlog

from calltrackd.b2bua.call import State
from calltrackd.sip.endpoint import Address
from calltrackd.tracking.model import ForwardTarget
from tests.unit.b2bua.net import (
    CALLER,
    CARRIER,
    DID,
    PBX_A,
    PBX_SDP,
    SDP,
    Net,
    Peer,
    settings,
)


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


def answered(net: Net) -> None:
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.pbx_a.respond(200)
    assert net.carrier.statuses()[-1] == 200


def test_answered_call_callee_hangs_up() -> None:
    net = Net()
    answered(net)
    net.advance(1.0)
    net.pbx_a.send("BYE")
    assert net.pbx_a.statuses("BYE") == [200]
    assert net.carrier.methods() == ["BYE"]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("answered", 200, "callee")
    assert cdr.talk_seconds == 1.0


def test_busy_target_gives_486_and_busy_record() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(486)
    assert net.carrier.statuses() == [100, 486]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("busy", 486, "callee")
    assert cdr.talk_seconds == 0.0


def test_ring_timeout_cancels_target_and_gives_480() -> None:
    net = Net(settings(ring_timeout=2.0))
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.advance(1.9)
    assert "CANCEL" not in net.pbx_a.methods()
    net.advance(0.2)
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    assert net.carrier.statuses() == [100, 180, 480]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("no_answer", 480, "system")
    assert cdr.ring_seconds == 2.0


def test_caller_cancel_while_ringing_sends_487_and_cancels_target() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.carrier.cancel()
    assert net.carrier.statuses("CANCEL") == [200]
    assert net.carrier.statuses() == [100, 180, 487]
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("cancelled", 487, "caller")


def test_cancel_before_the_target_answers_anything_waits_for_its_provisional() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.layer.transmits()  # the PBX's own 100 is lost... and it says nothing more
    net.carrier.cancel()
    assert net.carrier.statuses() == [100, 487]
    assert net.pbx_a.methods() == ["INVITE"]  # §9.1: no CANCEL before a provisional
    net.pbx_a.respond(180)
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]


@pytest.mark.parametrize("code", [404, 480, 486, 500, 503])
def test_failover_on_4xx_and_5xx_to_the_next_target(code: int) -> None:
    net = Net(settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060"))
    net.carrier.invite()
    net.pbx_a.respond(code)
    assert net.pbx_b.methods() == ["INVITE"]
    net.pbx_b.respond(200)
    assert net.carrier.statuses() == [100, 200]
    assert net.hooks.kinds == ["started", "forwarded", "forwarded", "answered"]
    net.carrier.send("BYE")
    assert net.pbx_b.methods() == ["INVITE", "BYE"]
    assert "BYE" not in net.pbx_a.methods()
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.target) == ("answered", "sip:10.0.1.2:5060")


def test_failover_when_the_target_never_answers_timer_b() -> None:
    net = Net(settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060", ring_timeout=60.0))
    net.peers.pop((net.pbx_a.addr.host, net.pbx_a.addr.port))
    net.peers[("10.0.1.1", 5060)] = Silent(net)  # a host that is down
    net.carrier.invite()
    net.advance(31.0)
    assert net.pbx_b.methods() == []
    net.advance(2.0)  # Timer B: 64*T1 = 32 s
    assert net.pbx_b.methods() == ["INVITE"]
    net.pbx_b.respond(486)
    assert net.carrier.statuses() == [100, 486]
    assert net.hooks.cdr.outcome == "busy"


def test_all_targets_timing_out_gives_408() -> None:
    net = Net(settings("sip:10.0.1.1:5060", ring_timeout=60.0))
    net.peers[("10.0.1.1", 5060)] = Silent(net)
    net.carrier.invite()
    net.advance(33.0)
    assert net.carrier.statuses() == [100, 408]
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("no_answer", 408, "system")


@pytest.mark.parametrize("code", [600, 603, 604])
def test_6xx_ends_the_hunt(code: int) -> None:
    net = Net(settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060"))
    net.carrier.invite()
    net.pbx_a.respond(code)
    assert net.pbx_b.methods() == []
    assert net.carrier.statuses() == [100, code]
    assert net.hooks.cdr.sip_code == code


def test_all_targets_failing_relays_the_last_code() -> None:
    net = Net(settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060"))
    net.carrier.invite()
    net.pbx_a.respond(486)
    net.pbx_b.respond(503)
    assert net.carrier.statuses() == [100, 503]
    assert (net.hooks.cdr.outcome, net.hooks.cdr.sip_code) == ("failed", 503)


def test_ring_timeout_hands_the_call_to_the_next_and_a_late_answer_is_hung_up() -> None:
    net = Net(settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060", ring_timeout=2.0))
    net.carrier.invite()
    net.pbx_a.respond(180)
    # the first target does not hear the CANCEL and answers after all: ACKed and hung up
    net.loss = lambda data, dest: dest == PBX_A and data.startswith(b"CANCEL ")
    net.advance(2.1)
    assert net.pbx_b.methods() == ["INVITE"]
    net.loss = None
    net.pbx_a.respond(200)
    assert len(net.pbx_a.acks) == 1 and net.pbx_a.methods()[-1] == "BYE"
    net.pbx_b.respond(200)
    assert net.carrier.statuses() == [100, 180, 200]
    net.carrier.send("BYE")
    assert net.pbx_b.methods()[-1] == "BYE"
    assert net.hooks.cdr.target == "sip:10.0.1.2:5060"


def test_early_media_183_reaches_the_caller_with_its_sdp() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(183)
    early = net.carrier.responses[-1]
    assert (early.status, early.body) == (183, PBX_SDP)
    assert early.headers.get("Content-Type") == "application/sdp"
    assert net.engine.calls[next(iter(net.engine.calls))].state is State.EARLY
    net.pbx_a.respond(200)
    assert net.carrier.statuses() == [100, 183, 200]


def test_late_offer_the_callers_ack_carries_the_answer_to_the_callee() -> None:
    net = Net()
    net.carrier.answer_ack_body = SDP
    net.carrier.invite(body=b"")
    assert net.pbx_a.last("INVITE").body == b""
    net.pbx_a.respond(200)  # the offer
    assert net.carrier.responses[-1].body == PBX_SDP
    assert [a.body for a in net.pbx_a.acks] == [SDP]


@pytest.mark.parametrize("side", ["caller", "callee"])
def test_reinvite_is_relayed_with_its_sdp_and_its_answer_comes_back(side: str) -> None:
    net = Net()
    answered(net)
    sender, other = (net.carrier, net.pbx_a) if side == "caller" else (net.pbx_a, net.carrier)
    offer = b"v=0\r\ns=hold\r\n"
    sender.send("INVITE", offer)
    reinvite = other.last("INVITE")
    assert reinvite.body == offer and reinvite.to.tag  # in the dialog
    assert sender.statuses()[-1] == 200
    assert sender.responses[-1].body == other.sdp
    assert len(other.acks) == (2 if side == "caller" else 1)  # the relayed 2xx is ACKed
    sender.send("BYE")
    assert net.hooks.cdr.outcome == "answered"


@pytest.mark.parametrize(("method", "side"), [("UPDATE", "callee"), ("UPDATE", "caller"),
                                              ("INFO", "caller"), ("INFO", "callee")])
def test_update_and_info_are_relayed_both_ways(method: str, side: str) -> None:
    net = Net()
    answered(net)
    sender, other = (net.carrier, net.pbx_a) if side == "caller" else (net.pbx_a, net.carrier)
    body = b"v=0\r\n" if method == "UPDATE" else b""
    sender.send(method, body)
    assert other.methods()[-1] == method
    assert sender.statuses(method) == [200]
    if method == "UPDATE":
        assert sender.responses[-1].body == other.sdp


def test_a_relayed_request_the_other_side_refuses_gets_its_code() -> None:
    net = Net()
    answered(net)
    net.pbx_a.refuse_in_dialog = {"INFO": 415}
    net.carrier.send("INFO")
    assert net.carrier.statuses("INFO") == [415]


def test_a_relayed_request_nobody_answers_gets_408_and_the_call_stays_up() -> None:
    net = Net()
    answered(net)
    net.loss = lambda data, dest: dest == PBX_A and data.startswith(b"INFO ")
    net.carrier.send("INFO")
    net.advance(40.0)
    # Timer F runs out on both sides at once: the caller's own transaction gives up as
    # our 408 leaves
    answers = [d for d, dest in net.engine_sent if dest == CARRIER and b"INFO" in d]
    assert answers and answers[-1].startswith(b"SIP/2.0 408 ")
    net.loss = None
    net.carrier.send("BYE")
    assert net.hooks.cdr.outcome == "answered"


@pytest.mark.parametrize(("code", "header", "reply"),
                         [(401, "WWW-Authenticate", "Authorization"),
                          (407, "Proxy-Authenticate", "Proxy-Authorization")])
def test_digest_challenge_is_answered_once_with_the_targets_credentials(
        code: int, header: str, reply: str) -> None:
    target = ForwardTarget("sip:10.0.1.1:5060", username="pbxuser", password="secret")
    net = Net(settings(target))
    net.carrier.invite()
    challenge = 'Digest realm="pbx", nonce="abc123", algorithm=MD5, qop="auth"'
    net.pbx_a.respond(code, headers={header: challenge})
    first, retry = [r for r in net.pbx_a.requests if r.method == "INVITE"]
    assert retry.cseq[0] == first.cseq[0] + 1 and retry.call_id == first.call_id
    credentials = retry.headers.get(reply) or ""
    assert 'username="pbxuser"' in credentials and 'realm="pbx"' in credentials
    net.pbx_a.respond(code, headers={header: challenge})  # wrong password: no third try
    assert len([r for r in net.pbx_a.requests if r.method == "INVITE"]) == 2
    assert net.carrier.statuses() == [100, code]


def test_max_call_duration_hangs_up_both_sides() -> None:
    net = Net(settings(max_call_duration=10.0))
    answered(net)
    net.advance(9.9)
    assert net.hooks.kinds[-1] == "answered"
    net.advance(0.2)
    assert net.carrier.methods() == ["BYE"] and net.pbx_a.methods()[-1] == "BYE"
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.sip_code, cdr.hangup_by) == ("answered", 200, "system")
    assert cdr.talk_seconds == 10.0


def test_draining_node_sheds_new_invites_with_retry_after() -> None:
    net = Net()
    net.engine.draining = True
    net.carrier.invite()
    refusal = net.carrier.responses[-1]
    assert (refusal.status, refusal.headers.get("Retry-After")) == (503, "5")
    assert net.pbx_a.requests == [] and net.hooks.seen == []
    assert net.engine.shed_counts()["reasons"]["draining"] == 1


def test_terminate_hangs_up_answered_calls_and_refuses_ringing_ones() -> None:
    net = Net()
    answered(net)
    ringing = Peer(net, Address("udp", "10.0.0.1", 5062))
    net.peers[("10.0.0.1", 5062)] = ringing
    ringing.invite()
    net.pbx_a.respond(180)
    net.engine.terminate_all()
    net.pump()
    assert net.carrier.methods() == ["BYE"]
    refusal = ringing.responses[-1]
    assert (refusal.status, refusal.headers.get("Retry-After")) == (503, "5")
    assert net.pbx_a.methods().count("CANCEL") == 1
    outcomes = sorted((c.outcome or "", c.sip_code or 0) for k, c in net.hooks.seen
                      if k == "ended")
    assert outcomes == [("answered", 200), ("failed", 503)]
    assert net.engine.active_calls == 0


def test_glare_both_reinvites_cross_and_each_side_gets_491() -> None:
    net = Net()
    answered(net)
    net.carrier.refuse_in_dialog = {"INVITE": 491}
    net.pbx_a.refuse_in_dialog = {"INVITE": 491}  # each has its own re-INVITE pending
    net.carrier.send("INVITE", b"v=0\r\n", pump=False)
    net.pbx_a.send("INVITE", b"v=0\r\n", pump=False)
    net.pump()
    assert net.carrier.statuses()[-1] == 491 and net.pbx_a.statuses()[-1] == 491
    net.carrier.send("BYE")  # the call survives the glare
    assert net.hooks.cdr.outcome == "answered"


def test_reinvite_before_the_answer_gets_491() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.carrier.dialog.receive_response(net.carrier.responses[-1])  # type: ignore[union-attr]
    net.carrier.send("INVITE", b"v=0\r\n")
    assert net.carrier.statuses()[-1] == 491
    assert net.pbx_a.methods() == ["INVITE"]


def test_target_answer_crossing_our_cancel_is_acked_and_hung_up() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(180)
    # our CANCEL is still on its way...
    net.loss = lambda data, dest: dest == PBX_A and data.startswith(b"CANCEL ")
    net.carrier.cancel()
    net.loss = None
    assert net.carrier.statuses() == [100, 180, 487]
    net.pbx_a.respond(200)  # ... when the PBX answers
    assert len(net.pbx_a.acks) == 1
    assert net.pbx_a.methods()[-1] == "BYE"
    assert net.carrier.methods() == []  # the caller, gone, hears nothing of it
    assert net.hooks.cdr.outcome == "cancelled"


def test_callers_cancel_crossing_our_200_leaves_the_call_up() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.loss = lambda data, dest: dest == CARRIER and data.startswith(b"SIP/2.0 200")
    net.pbx_a.respond(200)
    net.loss = None
    net.carrier.cancel()  # the caller did not hear our 200 yet
    assert net.carrier.statuses("CANCEL") == [200]
    assert "CANCEL" not in net.pbx_a.methods()
    net.advance(1.0)  # our 2xx is retransmitted, and ACKed
    assert net.carrier.statuses()[-1] == 200
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.hangup_by) == ("answered", "caller")


@pytest.mark.parametrize("every", [3, 4, 5, 7])
def test_a_call_completes_with_datagrams_lost(every: int) -> None:
    count = itertools.count(1)
    net = Net(loss=lambda data, dest: next(count) % every == 0)
    net.carrier.invite()
    net.advance(5.0)
    assert net.pbx_a.invite_txn is not None
    net.pbx_a.respond(180)
    net.pbx_a.respond(200)
    net.advance(10.0)
    assert 200 in net.carrier.statuses()
    net.carrier.send("BYE")
    net.advance(40.0)
    assert net.carrier.statuses("BYE") == [200]
    assert "BYE" in net.pbx_a.methods()
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.hangup_by) == ("answered", "caller")
    assert net.dropped  # something was lost indeed
    assert net.engine.lingering_calls == 0 and net.stack.layer.transaction_count == 0


def test_target_by_name_is_resolved_and_an_unresolvable_one_skipped() -> None:
    net = Net(settings("sip:nowhere.invalid:5060", "sip:pbx.example:5060"))
    net.names["pbx.example"] = "10.0.1.1"
    net.carrier.invite()
    assert net.pbx_a.methods() == ["INVITE"]
    net.pbx_a.respond(200)
    assert net.carrier.statuses() == [100, 200]


def test_bye_in_the_early_dialog_ends_the_call() -> None:
    net = Net()
    net.carrier.invite()
    net.pbx_a.respond(180)
    net.carrier.dialog.receive_response(net.carrier.responses[-1])  # type: ignore[union-attr]
    net.carrier.send("BYE")
    assert net.carrier.statuses("BYE") == [200]
    assert net.carrier.statuses()[-1] == 487
    assert net.pbx_a.methods() == ["INVITE", "CANCEL"]
    assert net.hooks.cdr.outcome == "cancelled"


def test_one_canonical_line_per_call() -> None:
    net = Net()
    with structlog.testing.capture_logs() as logs:
        answered(net)
        net.carrier.send("BYE")
    ended = [x for x in logs if x["event"] == "call.ended"]
    assert len(ended) == 1
    line = ended[0]
    assert line["tracker"] == "main" and line["carrier"] == "carrier"
    assert (line["outcome"], line["hangup_by"], line["sip_code"]) == ("answered", "caller", 200)
    assert line["a_call_id"] == net.carrier.client_invite.call_id  # type: ignore[union-attr]
    assert line["b_call_id"] == net.pbx_a.last("INVITE").call_id
    assert "attribution" in line
    assert all("." in x["event"] for x in logs)


class Silent(Peer):
    """A host that never answers."""

    def __init__(self, net: Net) -> None:
        super().__init__(net, Address("udp", "10.0.1.1", 5060))

    def deliver(self, data: bytes, source: Address) -> None:
        pass
