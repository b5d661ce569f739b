"""Late offer and hold in anchored calls, on the fake link with the fake rtpengine of
test_call_media.py: an INVITE without SDP gets its offer from the PBX's 200 (rtpengine
`offer` from the PBX's side) and its answer from the caller's ACK (`answer`); a call on
hold is not ended by the media timeout, and is again once taken off hold."""

from __future__ import annotations

import asyncio

import pytest

from calltrackd.media.sdp import on_hold
from tests.unit.b2bua.net import PBX_SDP, SDP
from tests.unit.b2bua.test_call_media import anchored_net

SENDONLY = SDP + b"a=sendonly\r\n"
RECVONLY = PBX_SDP + b"a=recvonly\r\n"


def test_late_offer_is_anchored_offer_in_the_200_answer_in_the_ack() -> None:
    net, fake = anchored_net(record=True)
    net.carrier.answer_ack_body = SDP
    net.carrier.invite(body=b"")
    assert net.pbx_a.last("INVITE").body == b""  # nothing to offer: the INVITE goes on
    assert fake.calls == []
    net.pbx_a.respond(200)  # the PBX's offer
    offer = fake.calls[0]
    a_tag = net.carrier.client_invite.from_.tag if net.carrier.client_invite else None
    b_tag = net.pbx_a.dialog.local_tag if net.pbx_a.dialog else None
    # rtpengine is offered the PBX's SDP from the PBX's side, toward the caller
    assert offer == ("offer", offer[1], b_tag, PBX_SDP.decode(), "True", a_tag, "late")
    assert net.carrier.responses[-1].body == b"reoffer:" + PBX_SDP  # rtpengine's offer
    answer = fake.calls[1]
    assert answer == ("answer", offer[1], b_tag, a_tag, SDP.decode())
    assert [a.body for a in net.pbx_a.acks] == [b"reanswer:" + SDP]  # rtpengine's answer
    net.advance(2.0)
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert cdr.outcome == "answered" and cdr.talk_seconds == 2.0
    assert cdr.extra["media"] == {"mode": "anchor", "recorded": True, "late_offer": True}
    assert [info.id for info, _ in fake.finished] == [cdr.id]


def test_late_offer_with_rtpengine_down_goes_direct() -> None:
    net, fake = anchored_net(fail="offer")
    net.carrier.answer_ack_body = SDP
    net.carrier.invite(body=b"")
    net.pbx_a.respond(200)
    assert net.carrier.responses[-1].body == PBX_SDP  # the PBX's own offer
    assert [a.body for a in net.pbx_a.acks] == [SDP]  # and the caller's own answer
    assert [c[0] for c in fake.calls] == ["offer"]
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert cdr.outcome == "answered"
    assert cdr.extra["media"]["mode"] == "direct"
    assert cdr.extra["media"]["reason"].startswith("late offer: no answer within")
    assert fake.finished == []


def test_late_offer_answer_failing_relays_the_callers_sdp() -> None:
    net, fake = anchored_net(fail="answer")
    net.carrier.answer_ack_body = SDP
    net.carrier.invite(body=b"")
    net.pbx_a.respond(200)
    assert net.carrier.responses[-1].body == b"reoffer:" + PBX_SDP
    assert [a.body for a in net.pbx_a.acks] == [SDP]
    net.carrier.send("BYE")
    assert net.hooks.cdr.extra["media"]["reason"].startswith("answer:")
    assert len(fake.finished) == 1  # the offer made a call in rtpengine: deleted


def test_late_offer_183_is_offered_too_and_the_next_target_gets_no_sdp() -> None:
    net, fake = anchored_net()
    net.carrier.invite(body=b"")
    net.pbx_a.respond(183)
    assert net.carrier.responses[-1].status == 183
    assert net.carrier.responses[-1].body == b"reoffer:" + PBX_SDP
    assert [c[0] for c in fake.calls] == ["offer"]
    net.pbx_a.respond(486)
    assert net.carrier.statuses()[-1] == 486
    assert len(fake.finished) == 1  # rtpengine knew the call: deleted


def test_early_offer_hold_and_resume_set_on_hold() -> None:
    net, _ = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    call = next(iter(net.engine.calls.values()))
    assert not call.on_hold
    net.carrier.send("INVITE", SENDONLY)
    assert call.on_hold
    net.carrier.send("INVITE", SDP)
    assert not call.on_hold


def test_hold_suspends_the_media_timeout_and_resume_restarts_it() -> None:
    net, fake = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    net.pbx_a.sdp = RECVONLY  # the PBX answers the hold as phones do
    net.carrier.send("INVITE", SENDONLY)  # the caller puts the PBX on hold
    net.advance(60.0)
    fake.idle_seconds = 60.0  # the PBX sends nothing while on hold
    asyncio.run(net.engine.check_media(5.0))
    net.pump()
    assert net.engine.active_calls == 1  # on hold: not a dead call
    net.pbx_a.sdp = PBX_SDP
    net.carrier.send("INVITE", SDP)  # off hold
    net.advance(2.0)
    asyncio.run(net.engine.check_media(5.0))  # silent for 2 s since the resume only
    assert net.engine.active_calls == 1
    net.advance(4.0)  # 6 s after the resume, still no RTP: dead
    asyncio.run(net.engine.check_media(5.0))
    net.pump()
    assert net.carrier.methods()[-1] == "BYE" and net.pbx_a.methods()[-1] == "BYE"
    cdr = net.hooks.cdr
    assert (cdr.hangup_by, cdr.extra["reason"]) == ("system", "media_timeout")
    assert cdr.talk_seconds == 60.0  # up to the resume: no media came after it


def test_hold_by_the_callee_connection_address_zero() -> None:
    net, fake = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    net.pbx_a.send("UPDATE", PBX_SDP.replace(b"c=IN IP4 10.0.1.1", b"c=IN IP4 0.0.0.0"))
    fake.idle_seconds = 30.0
    asyncio.run(net.engine.check_media(5.0))
    assert net.engine.active_calls == 1


@pytest.mark.parametrize(("sdp", "held"), [
    (SDP, False),
    (SENDONLY, True),
    (RECVONLY, True),
    (SDP + b"a=inactive\r\n", True),
    (SDP.replace(b"c=IN IP4 10.0.0.1", b"c=IN IP4 0.0.0.0"), True),
    (b"v=0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n", False),  # media wins
    (b"v=0\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n", True),  # the session's applies
    (b"v=0\r\nm=audio 0 RTP/AVP 0\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n", False),
    (b"v=0\r\ns=hold\r\n", False),
])
def test_on_hold(sdp: bytes, held: bool) -> None:
    assert on_hold(sdp) is held


def test_a_refused_hold_leaves_the_call_off_hold() -> None:
    net, _ = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    call = next(iter(net.engine.calls.values()))
    net.pbx_a.refuse_in_dialog["INVITE"] = 488
    net.carrier.send("INVITE", SENDONLY)
    assert net.carrier.statuses()[-1] == 488
    assert not call.on_hold  # the exchange did not happen: the timeout still applies
