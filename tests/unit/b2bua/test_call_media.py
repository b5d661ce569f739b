"""Media anchoring as commands of the call engine, on the fake link: a fake rtpengine
(pure logic) rewrites SDPs, or fails as a dead one would; the call goes on either way."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from calltrackd.b2bua.commands import CallInfo
from calltrackd.config.settings import MediaSettings, TrackerMedia
from calltrackd.media.ng import NgTimeout
from tests.unit.b2bua.net import PBX_SDP, SDP, Net, settings

RTP_OFFER = SDP.replace(b"10.0.0.1", b"192.0.2.10")  # what the PBX gets
RTP_ANSWER = PBX_SDP.replace(b"10.0.1.1", b"192.0.2.20")  # what the carrier gets


class FakeMedia:
    """The engine's MediaControl: answers at once (a test task must not wait)."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, ...]] = []
        self.finished: list[tuple[CallInfo, bool]] = []
        self.idle_seconds: float | None = 0.5

    async def offer(self, call_id: str, from_tag: str, sdp: str, *, record: bool,
                    to_tag: str | None = None, late: bool = False) -> str:
        self.calls.append(("offer", call_id, from_tag, sdp, str(record), str(to_tag))
                          + (("late",) if late else ()))
        if self.fail == "offer" or (self.fail == "reoffer" and to_tag is not None):
            raise NgTimeout("no answer within 1.0 s", command="offer")
        return (b"reoffer:" + sdp.encode() if to_tag else RTP_OFFER).decode()

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str) -> str:
        self.calls.append(("answer", call_id, from_tag, to_tag, sdp))
        if self.fail == "answer":
            raise NgTimeout("no answer within 1.0 s", command="answer")
        reoffered = any(c[0] == "offer" and c[5] != "None" for c in self.calls)
        return ("reanswer:" + sdp) if reoffered else RTP_ANSWER.decode()

    async def finish(self, info: CallInfo, from_tag: str, *, record: bool) -> None:
        self.finished.append((info, record))

    async def idle(self, call_id: str) -> float | None:
        if self.fail == "query":
            raise NgTimeout("no answer within 1.0 s", command="query")
        return self.idle_seconds


def anchored_net(mode: str = "anchor", record: bool = False,
                 fail: str | None = None) -> tuple[Net, FakeMedia]:
    config = settings()
    media = MediaSettings(rtpengine=(("127.0.0.1", 2223),),
                          trackers={"main": TrackerMedia(mode, record)})  # type: ignore[arg-type]
    net = Net(dataclasses.replace(config, media=media))
    fake = FakeMedia(fail)
    net.engine.media = fake
    return net, fake


def test_anchored_call_offers_answers_and_deletes() -> None:
    net, fake = anchored_net(record=True)
    net.carrier.invite()
    assert net.pbx_a.last("INVITE").body == RTP_OFFER  # the PBX gets rtpengine's SDP
    net.pbx_a.respond(183, PBX_SDP)
    assert net.carrier.responses[-1].status == 183
    assert net.carrier.responses[-1].body == RTP_ANSWER
    net.pbx_a.respond(200)
    assert net.carrier.statuses()[-1] == 200
    assert net.carrier.responses[-1].body == RTP_ANSWER  # the caller gets rtpengine's
    assert [c[0] for c in fake.calls] == ["offer", "answer", "answer"]
    offer = fake.calls[0]
    assert offer[1].startswith("c_") and offer[3] == SDP.decode() and offer[4] == "True"
    net.advance(3.0)
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert cdr.extra["media"] == {"mode": "anchor", "recorded": True}
    assert [(info.id, record) for info, record in fake.finished] == [(cdr.id, True)]
    assert cdr.talk_seconds == 3.0


def test_direct_tracker_never_asks_rtpengine() -> None:
    net, fake = anchored_net(mode="direct")
    net.carrier.invite()
    net.pbx_a.respond(200)
    assert net.pbx_a.last("INVITE").body == SDP
    assert net.carrier.responses[-1].body == PBX_SDP
    net.carrier.send("BYE")
    assert fake.calls == [] and fake.finished == []


def test_rtpengine_down_on_offer_call_goes_direct() -> None:
    net, fake = anchored_net(fail="offer")
    net.carrier.invite()
    assert net.pbx_a.last("INVITE").body == SDP  # unchanged: the call goes on
    net.pbx_a.respond(200)
    assert net.carrier.responses[-1].body == PBX_SDP
    assert [c[0] for c in fake.calls] == ["offer"]  # no answer for a call not anchored
    net.carrier.send("BYE")
    cdr = net.hooks.cdr
    assert cdr.outcome == "answered"
    assert cdr.extra["media"]["mode"] == "direct"
    assert "no answer within" in cdr.extra["media"]["reason"]
    assert fake.finished == []  # nothing to delete
    assert net.engine.media_errors == 1


def test_rtpengine_fails_on_answer_caller_gets_callee_sdp() -> None:
    net, fake = anchored_net(fail="answer")
    net.carrier.invite()
    net.pbx_a.respond(200)
    assert net.carrier.statuses()[-1] == 200
    assert net.carrier.responses[-1].body == PBX_SDP
    net.carrier.send("BYE")
    assert net.hooks.cdr.extra["media"]["reason"].startswith("answer:")
    assert len(fake.finished) == 1  # the offer made a call in rtpengine: deleted


def test_failover_keeps_the_anchored_offer() -> None:
    net, fake = anchored_net()
    net.config = dataclasses.replace(
        settings("sip:10.0.1.1:5060", "sip:10.0.1.2:5060"), media=net.config.media)
    net.carrier.invite()
    net.pbx_a.respond(486)
    assert net.pbx_b.last("INVITE").body == RTP_OFFER
    net.pbx_b.respond(200)
    assert net.carrier.responses[-1].body == RTP_ANSWER
    assert [c[0] for c in fake.calls] == ["offer", "answer"]



def test_media_timeout_hangs_up_both_legs_talk_time_to_last_media() -> None:
    net, fake = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    net.advance(10.0)
    asyncio.run(net.engine.check_media(5.0))  # RTP flowing: nothing happens
    assert net.engine.active_calls == 1
    fake.idle_seconds = 6.0  # the PBX went silent 6 s ago, and sends no BYE
    asyncio.run(net.engine.check_media(5.0))
    net.pump()
    assert net.carrier.methods()[-1] == "BYE" and net.pbx_a.methods()[-1] == "BYE"
    cdr = net.hooks.cdr
    assert (cdr.outcome, cdr.hangup_by, cdr.extra["reason"]) == ("answered", "system",
                                                                 "media_timeout")
    assert cdr.talk_seconds == 4.0  # up to the last media, not to the detection
    assert net.engine.active_calls == 0


def test_media_query_failing_leaves_the_call_alone() -> None:
    net, _ = anchored_net(fail="query")
    net.carrier.invite()
    net.pbx_a.respond(200)
    asyncio.run(net.engine.check_media(5.0))
    assert net.engine.active_calls == 1


@pytest.mark.parametrize("side", ["caller", "callee"])
@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_reoffer_in_the_dialog_goes_through_rtpengine(method: str, side: str) -> None:
    net, fake = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    sender, other = (net.carrier, net.pbx_a) if side == "caller" else (net.pbx_a, net.carrier)
    offer = b"v=0\r\ns=hold\r\n"
    sender.send(method, offer)
    assert other.last(method).body == b"reoffer:" + offer  # rtpengine's SDP relayed
    assert sender.statuses(method)[-1] == 200
    assert sender.responses[-1].body == b"reanswer:" + other.sdp
    reoffer, reanswer = fake.calls[2], fake.calls[3]
    a_tag, b_tag = fake.calls[0][2], fake.calls[1][3]
    sender_tag, other_tag = (a_tag, b_tag) if side == "caller" else (b_tag, a_tag)
    assert (reoffer[0], reoffer[2], reoffer[5]) == ("offer", sender_tag, other_tag)
    assert (reanswer[0], reanswer[2], reanswer[3]) == ("answer", sender_tag, other_tag)


def test_reoffer_failing_relays_the_sdp_unchanged() -> None:
    net, _ = anchored_net(fail="reoffer")
    net.carrier.invite()
    net.pbx_a.respond(200)
    net.carrier.send("INVITE", b"v=0\r\ns=hold\r\n")
    assert net.pbx_a.last("INVITE").body == b"v=0\r\ns=hold\r\n"
    assert net.carrier.statuses()[-1] == 200


def test_info_is_relayed_without_rtpengine() -> None:
    net, fake = anchored_net()
    net.carrier.invite()
    net.pbx_a.respond(200)
    net.carrier.send("INFO")
    assert net.pbx_a.methods()[-1] == "INFO" and len(fake.calls) == 2
