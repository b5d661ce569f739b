"""The load shedder's queue probe on a real UDP socket: while the loop is busy, datagrams
wait in the kernel, and the probe's age on its way out is that wait."""

import asyncio
import socket
import time

from calltrackd.sip.endpoint import Address, TransactionLayer
from calltrackd.transport.stack import Listen, SipStack


async def test_probe_sees_the_time_datagrams_wait_while_the_loop_is_busy() -> None:
    stack = SipStack(TransactionLayer())
    fed: list[bytes] = []

    def feed(data: bytes, source: Address, stranger: bool = False) -> None:
        fed.append(data)

    stack.feed = feed  # type: ignore[method-assign]
    await stack.start([Listen("udp", "127.0.0.1", 0)])
    try:
        assert len(stack.queue_probes) == 1
        probe = stack.queue_probes[0]
        port = stack.listening[0].port
        probe.tick(time.monotonic())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
            carrier.sendto(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n", ("127.0.0.1", port))
        time.sleep(0.2)  # noqa: ASYNC251 - the loop is busy: both datagrams wait in the kernel
        for _ in range(50):
            await asyncio.sleep(0.01)
            if probe.delay:
                break
        assert 0.19 <= probe.delay < 1.0
        assert fed == [b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n"]  # the probe is not SIP
        probe.tick(time.monotonic())
        for _ in range(50):
            await asyncio.sleep(0.01)
            if probe.delay < 0.1:
                break
        assert probe.delay < 0.1  # an idle loop reads it at once
    finally:
        await stack.close()
