"""The ng client against fake rtpengines: UDP responders on loopback in the test."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from calltrackd.media import bencode
from calltrackd.media.ng import (
    NgClient,
    NgRejected,
    NgTimeout,
    NgUnavailable,
    OfferOptions,
)

Reply = dict[str, Any] | None
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
      "m=audio 4000 RTP/AVP 0 8\r\n"


class Fake(asyncio.DatagramProtocol):
    """A stand-in rtpengine: `handler(request, attempt)` gives the reply or None (drop)."""

    def __init__(self, handler: Callable[[dict[str, Any], int], Reply]) -> None:
        self.handler = handler
        self.received: list[tuple[bytes, dict[str, Any]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        cookie, _, body = data.partition(b" ")
        request = bencode.decode(body, text=True)
        assert isinstance(request, dict)
        self.received.append((cookie, request))
        attempt = sum(1 for c, _ in self.received if c == cookie)
        reply = self.handler(request, attempt)
        if reply is not None and self.transport is not None:
            self.transport.sendto(cookie + b" " + bencode.encode(reply), addr)

    def commands(self) -> list[str]:
        return [r["command"] for _, r in self.received]


# the fixture's factory: start_fake(handler=rewrite) -> a started Fake
StartFake = Callable[..., Awaitable[Fake]]


def rewrite(request: dict[str, Any], attempt: int) -> Reply:
    if request["command"] == "ping":
        return {"result": "pong"}
    if request["command"] in ("offer", "answer"):
        return {"result": "ok", "sdp": request["sdp"].replace("4000", "30000")}
    if request["command"] in ("delete", "query"):
        return {"result": "ok", "created": 1796000000, "totals": {
            "RTP": {"packets": 10, "bytes": 1720, "errors": 0},
            "RTCP": {"packets": 1, "bytes": 80, "errors": 0}}}
    return {"result": "error", "error-reason": "Unrecognized command"}


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    fakes: list[Fake] = []

    async def start(handler: Callable[[dict[str, Any], int], Reply] = rewrite) -> Fake:
        loop = asyncio.get_running_loop()
        _, fake = await loop.create_datagram_endpoint(lambda: Fake(handler),
                                                      local_addr=("127.0.0.1", 0))
        fakes.append(fake)
        return fake

    yield start
    for f in fakes:
        if f.transport is not None:
            f.transport.close()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_offer_sends_the_configured_flags_and_returns_the_rewritten_sdp(
        start_fake: StartFake) -> None:
    fake = await start_fake()
    client = NgClient([("127.0.0.1", fake.port)], options=OfferOptions(
        direction=("pub", "priv"), ice="remove", flags=("trust address",)))
    try:
        result = await client.offer("c_1", "ft1", SDP, record=True, metadata="call c_1")
    finally:
        client.close()
    assert "m=audio 30000 " in result.sdp
    assert result.instance == f"udp:127.0.0.1:{fake.port}"
    request = fake.received[0][1]
    assert request == {
        "command": "offer", "call-id": "c_1", "from-tag": "ft1", "sdp": SDP,
        "flags": ["trust address"], "replace": ["origin", "session connection"],
        "ICE": "remove", "direction": ["pub", "priv"], "record call": "yes",
        "metadata": "call c_1", "supports": ["load limit"]}


async def test_answer_delete_and_query_go_to_the_offers_instance(
        start_fake: StartFake) -> None:
    a, b = await start_fake(), await start_fake()
    client = NgClient([("127.0.0.1", a.port), ("127.0.0.1", b.port)])
    try:
        for i in range(40):
            offer = await client.offer(f"c_{i}", "ft", SDP)
            answer = await client.answer(f"c_{i}", "ft", "tt", SDP)
            stats = await client.query(f"c_{i}")
            deleted = await client.delete(f"c_{i}", "ft")
            assert offer.instance == answer.instance == stats.instance == deleted.instance
            assert "30000" in answer.sdp
            assert deleted.rtp_packets == 10 and deleted.rtcp_packets == 1
    finally:
        client.close()
    # the call ids spread over both instances, each call's four commands on one
    assert len(a.received) % 4 == 0 and len(b.received) % 4 == 0
    assert a.received and b.received
    assert {r["to-tag"] for _, r in a.received + b.received if r["command"] == "answer"} == {
        "tt"}


async def test_a_lost_request_is_sent_again_with_the_same_cookie(
        start_fake: StartFake) -> None:
    fake = await start_fake(lambda req, attempt: None if attempt < 3 else rewrite(req, 1))
    client = NgClient([("127.0.0.1", fake.port)], timeout=5.0, retransmit=0.05, tries=5)
    try:
        result = await client.offer("c_r", "ft", SDP)
    finally:
        client.close()
    assert "30000" in result.sdp
    cookies = [c for c, _ in fake.received]
    assert len(cookies) == 3 and len(set(cookies)) == 1


async def test_replies_are_matched_by_cookie_whatever_their_order(
        start_fake: StartFake) -> None:
    held: list[tuple[bytes, Any]] = []
    fake: Fake

    def hold(request: dict[str, Any], attempt: int) -> Reply:
        return None  # answered below, in reverse order

    fake = await start_fake(hold)
    original = fake.datagram_received

    def capture(data: bytes, addr: Any) -> None:
        original(data, addr)
        held.append((data, addr))
        if len(held) == 5:
            assert fake.transport is not None
            fake.transport.sendto(b"unknown_1 " + bencode.encode({"result": "ok"}), addr)
            for raw, to in reversed(held):
                cookie, _, body = raw.partition(b" ")
                req = bencode.decode(body, text=True)
                assert isinstance(req, dict) and isinstance(req["call-id"], str)
                reply = {"result": "ok", "sdp": f"v=0\r\ns={req['call-id']}\r\n"}
                fake.transport.sendto(cookie + b" " + bencode.encode(reply), to)

    fake.datagram_received = capture  # type: ignore[method-assign]
    client = NgClient([("127.0.0.1", fake.port)], timeout=10.0, retransmit=5.0)
    try:
        results = await asyncio.gather(*(client.offer(f"c_{i}", "ft", SDP) for i in range(5)))
    finally:
        client.close()
    assert [r.sdp.split("s=")[1].strip() for r in results] == [f"c_{i}" for i in range(5)]


async def test_no_answer_fails_within_the_budget(start_fake: StartFake) -> None:
    fake = await start_fake(lambda req, attempt: None)
    client = NgClient([("127.0.0.1", fake.port)], timeout=0.3, retransmit=0.1, tries=10)
    started = time.monotonic()
    try:
        with pytest.raises(NgTimeout):
            await client.offer("c_t", "ft", SDP)
    finally:
        client.close()
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 5.0  # the budget, and a wide margin for a busy machine
    assert len(fake.received) >= 1


async def test_a_dead_instance_is_skipped_and_tried_again_after_recheck(
        start_fake: StartFake) -> None:
    live = await start_fake()
    dead_port = closed_port()
    now = [1000.0]
    errors: list[tuple[str, str, str]] = []
    client = NgClient([("127.0.0.1", dead_port), ("127.0.0.1", live.port)], timeout=2.0,
                      retransmit=0.5, recheck=30.0, clock=lambda: now[0],
                      on_error=lambda *e: errors.append(e))
    dead = f"udp:127.0.0.1:{dead_port}"
    try:
        results = [await client.offer(f"c_{i}", "ft", SDP) for i in range(30)]
        assert {r.instance for r in results} == {f"udp:127.0.0.1:{live.port}"}
        assert not client.alive(dead)
        # only the first call that ranked the dead one first paid for finding out
        assert [e for e in errors if e[0] == dead] == [(dead, "offer", "unavailable")]
        now[0] += 31
        assert client.alive(dead)
        with pytest.raises(NgUnavailable):
            await client.ping(dead)
        assert not client.alive(dead)
    finally:
        client.close()


async def test_every_instance_dead_fails_at_once(start_fake: StartFake) -> None:
    client = NgClient([("127.0.0.1", closed_port())], timeout=2.0, retransmit=0.5)
    try:
        with pytest.raises(NgUnavailable):
            await client.offer("c_1", "ft", SDP)  # the port answers ICMP unreachable
        started = time.monotonic()
        with pytest.raises(NgUnavailable):
            await client.offer("c_2", "ft", SDP)  # marked dead: no wait at all
        assert time.monotonic() - started < 2.0
    finally:
        client.close()


async def test_an_error_reply_is_rejected_without_marking_the_instance_dead(
        start_fake: StartFake) -> None:
    fake = await start_fake(lambda req, attempt: {"result": "error",
                                                  "error-reason": "Incomplete SDP"})
    client = NgClient([("127.0.0.1", fake.port)])
    try:
        with pytest.raises(NgRejected, match="Incomplete SDP"):
            await client.offer("c_1", "ft", SDP)
        assert client.alive(f"udp:127.0.0.1:{fake.port}")
    finally:
        client.close()


async def test_load_limit_moves_the_call_to_the_next_instance(
        start_fake: StartFake) -> None:
    full = await start_fake(lambda req, attempt: {"result": "load limit"})
    free = await start_fake()
    client = NgClient([("127.0.0.1", full.port), ("127.0.0.1", free.port)])
    try:
        instances = {(await client.offer(f"c_{i}", "ft", SDP)).instance for i in range(10)}
    finally:
        client.close()
    assert instances == {f"udp:127.0.0.1:{free.port}"}
    assert full.received  # some calls ranked the full one first and were moved


async def test_query_reports_the_last_rtp_of_each_side(start_fake: StartFake) -> None:
    def handler(request: dict[str, Any], attempt: int) -> Reply:
        stream = {"flags": ["RTP", "filled"], "last packet": 1796000050,
                  "stats": {"packets": 5, "bytes": 860, "errors": 0}}
        silent = {"flags": ["RTP"], "last packet": 1796000001,
                  "stats": {"packets": 0, "bytes": 0, "errors": 0}}
        return {"result": "ok", "created": 1796000000, "created_us": 500000,
                "last signal": 1796000002,
                "tags": {"caller": {"medias": [{"streams": [stream]}]},
                         "callee": {"medias": [{"streams": [silent]}]}},
                "totals": {"RTP": {"packets": 5, "bytes": 860, "errors": 0}}}

    fake = await start_fake(handler)
    client = NgClient([("127.0.0.1", fake.port)])
    try:
        stats = await client.query("c_1")
    finally:
        client.close()
    assert stats.created == 1796000000.5 and stats.last_signal == 1796000002
    assert stats.last_rtp == {"caller": 1796000050.0}
    assert stats.rtp_packets == 5


async def test_a_malformed_reply_is_an_error_not_a_crash(
        start_fake: StartFake) -> None:
    fake = await start_fake()

    def junk(data: bytes, addr: Any) -> None:
        cookie = data.partition(b" ")[0]
        assert fake.transport is not None
        fake.transport.sendto(cookie + b" d6:result", addr)

    fake.datagram_received = junk  # type: ignore[method-assign]
    client = NgClient([("127.0.0.1", fake.port)], timeout=1.0)
    try:
        with pytest.raises(Exception) as exc:
            await client.offer("c_1", "ft", SDP)
    finally:
        client.close()
    assert "malformed reply" in str(exc.value)
