"""The ng client and the recording conversion against a real rtpengine, driven exactly
as the call engine will: offer with the caller's SDP (recording on), answer with the
callee's, RTP both ways through rtpengine's ports, delete, then the pcap → WAV."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calltrackd.media.ng import NgClient, NgError, NgRejected, NgUnavailable
from calltrackd.media.store import RecordingStore
from tests.audio import decode_rtp, dominant, rms, rtp_packets, tone, wav_channels

from .rtpengine import Rtpengine

SECONDS = 3.0


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[Rtpengine]:
    r = Rtpengine(tmp_path / "rtpengine")
    r.start()
    yield r
    r.stop()


def client_for(r: Rtpengine, **kw: Any) -> NgClient:
    host, port = r.address.split(":")[1:]
    return NgClient([(host, int(port))], **kw)


def sdp(port: int, pts: str, session: str) -> str:
    return (f"v=0\r\no={session} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP {pts}\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


def media_port(text: str) -> int:
    m = re.search(r"^m=audio (\d+) ", text, re.M)
    assert m, text
    return int(m.group(1))


class Phone(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    @property
    def port(self) -> int:
        return int(self.transport.get_extra_info("sockname")[1])


async def phone() -> Phone:
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    return p


async def play(p: Phone, to: int, packets: list[bytes]) -> None:
    """Sends 20-ms packets on an absolute schedule (no drift on a busy machine)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, packet in enumerate(packets):
        delay = start + 0.02 * i - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        p.transport.sendto(packet, ("127.0.0.1", to))


async def wait_for(pred: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_anchored_recorded_call_end_to_end(rtpengine: Rtpengine, tmp_path: Path) -> None:
    caller, callee = await phone(), await phone()
    client = client_for(rtpengine)
    call_id = "c_e2e1"
    try:
        offer = await client.offer(call_id, "caller-tag", sdp(caller.port, "0 8 101", "caller"),
                                   record=True, metadata=f"calltrackd call {call_id}")
        # what the callee is told: rtpengine's address, not the caller's
        to_rtpengine_from_callee = media_port(offer.sdp)
        assert to_rtpengine_from_callee != caller.port
        assert offer.recordings and offer.recordings[0].endswith(".pcap")
        answer = await client.answer(call_id, "caller-tag", "callee-tag",
                                     sdp(callee.port, "0 8 101", "callee"))
        to_rtpengine_from_caller = media_port(answer.sdp)
        caller_audio = list(rtp_packets("PCMU", tone(440, SECONDS), pt=0, ssrc=0x1111))
        callee_audio = list(rtp_packets("PCMA", tone(1000, SECONDS), pt=8, ssrc=0x2222))
        await asyncio.gather(play(caller, to_rtpengine_from_caller, caller_audio),
                             play(callee, to_rtpengine_from_callee, callee_audio))
        n = len(caller_audio)
        await wait_for(lambda: len(caller.received) >= n * 0.95
                       and len(callee.received) >= n * 0.95)
        stats = await client.query(call_id)
        assert stats.rtp_packets >= 2 * n * 0.95
        assert set(stats.last_rtp) == {"caller-tag", "callee-tag"}
        deleted = await client.delete(call_id, "caller-tag")
        assert deleted.rtp_packets >= 2 * n * 0.95
    finally:
        client.close()
        caller.transport.close()
        callee.transport.close()

    # each phone heard the other one's tone
    heard_by_callee = decode_rtp("PCMU", [p for p in callee.received if p[1] & 0x7F == 0])
    heard_by_caller = decode_rtp("PCMA", [p for p in caller.received if p[1] & 0x7F == 8])
    assert dominant(heard_by_callee[:8000]) == 440
    assert dominant(heard_by_caller[:8000]) == 1000

    store = RecordingStore(tmp_path / "recordings", spool=rtpengine.spool)
    info = await store.import_call(call_id, wait=20.0)
    assert info is not None and info.format == "wav", info
    assert info.seconds is not None and abs(info.seconds - SECONDS) <= 0.5
    channels, left, right = wav_channels(str(info.path))
    assert channels == 2
    assert rms(left) > 1000 and rms(right) > 1000
    assert dominant(left) == 440 and dominant(right) == 1000
    assert not list((rtpengine.spool / "pcaps").iterdir())  # the spool is cleared


async def test_ping_query_and_errors_of_a_real_rtpengine(rtpengine: Rtpengine) -> None:
    client = client_for(rtpengine)
    try:
        assert await client.ping(client.instances[0]) >= 0
        assert await client.check() == {client.instances[0]: "ok"}
        deleted = await client.delete("c_never_offered", "tag")
        assert deleted.warning is not None  # rtpengine answers ok + warning
        with pytest.raises(NgRejected):
            await client.query("c_never_offered")
        with pytest.raises(NgRejected):
            await client.offer("c_bad", "tag", "this is not SDP")
        assert client.alive(client.instances[0])
    finally:
        client.close()


async def test_rtpengine_stopped_mid_call_fails_within_the_budget(rtpengine: Rtpengine) -> None:
    caller = await phone()
    budget = 0.5
    client = client_for(rtpengine, timeout=budget, retransmit=0.1, recheck=1.0)
    try:
        await client.offer("c_stop", "caller-tag", sdp(caller.port, "0 8", "caller"))
        rtpengine.stop()
        for attempt in (client.answer("c_stop", "caller-tag", "callee-tag",
                                      sdp(caller.port + 2, "0 8", "callee")),
                        client.offer("c_next", "caller-tag", sdp(caller.port, "0 8", "c"))):
            started = time.monotonic()
            with pytest.raises(NgError):
                await attempt
            # within the budget (with a wide margin for a busy machine): the engine can
            # go on with the media direct
            assert time.monotonic() - started < budget + 5.0
        with pytest.raises(NgUnavailable):
            await client.offer("c_later", "caller-tag", sdp(caller.port, "0 8", "c"))
        assert (await client.check())[client.instances[0]] != "ok"
        # back on the same port: after `recheck` new calls are offered to it again
        rtpengine.start()
        await asyncio.sleep(1.1)
        offer = await client.offer("c_back", "caller-tag", sdp(caller.port, "0 8", "c"))
        assert media_port(offer.sdp) != caller.port
    finally:
        client.close()
        caller.transport.close()
