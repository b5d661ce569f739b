"""rtpengine ng round trips and recording conversion speed.

    .venv/bin/python tests/bench/bench_media.py [--calls 1000] [--seconds 60]

Starts a real rtpengine (userspace, loopback, temporary directory, as the tests do) and
runs --calls sequential calls through calltrackd's ng client: offer (recording on),
answer, delete, timing each command's round trip (p50, p99, max). Then converts a
synthetic recording of --seconds seconds (G.711 both ways, 50 packets/s each, written as
rtpengine writes its pcaps) to WAV several times and prints the seconds of audio
converted per CPU second. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from calltrackd.media.ng import NgClient  # noqa: E402
from calltrackd.media.recording import convert, parse_metadata  # noqa: E402
from tests.audio import ipv4_udp, pcap, rtp_packets, tone  # noqa: E402
from tests.integration.rtpengine import Rtpengine  # noqa: E402
from tests.unit.media.test_recording import (  # noqa: E402
    CALLEE,
    CALLER,
    PORT_ANSWER,
    PORT_OFFER,
    metadata,
)

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def ng_rounds(r: Rtpengine, calls: int) -> dict[str, list[float]]:
    host, port = r.address.split(":")[1:]
    client = NgClient([(host, int(port))], timeout=2.0)
    times: dict[str, list[float]] = {"offer": [], "answer": [], "delete": []}
    try:
        for i in range(calls):
            cid = f"c_bench{i}"
            t0 = time.perf_counter()
            await client.offer(cid, "ft", SDP.format(port=10000 + 2 * (i % 1000)),
                               record=True, metadata=cid)
            t1 = time.perf_counter()
            await client.answer(cid, "ft", "tt", SDP.format(port=12000 + 2 * (i % 1000)))
            t2 = time.perf_counter()
            await client.delete(cid, "ft")
            t3 = time.perf_counter()
            times["offer"].append(t1 - t0)
            times["answer"].append(t2 - t1)
            times["delete"].append(t3 - t2)
    finally:
        client.close()
    return times


def conversion(seconds: float, runs: int) -> tuple[float, float]:
    caller = list(rtp_packets("PCMU", tone(440, seconds), pt=0, ssrc=1))
    callee = list(rtp_packets("PCMA", tone(1000, seconds), pt=8, ssrc=2))
    t0 = 1796000000.0
    records = [(t0 + 0.02 * i, ipv4_udp(CALLER, ("127.0.0.1", PORT_ANSWER), p))
               for i, p in enumerate(caller)]
    records += [(t0 + 0.02 * i + 0.001, ipv4_udp(CALLEE, ("127.0.0.1", PORT_OFFER), p))
                for i, p in enumerate(callee)]
    records.sort(key=lambda x: x[0])
    data = pcap(records)
    meta = parse_metadata(metadata())
    with tempfile.TemporaryDirectory() as d:
        cpu = []
        for _ in range(runs):
            start = time.process_time()
            result = convert(meta, data, Path(d) / "out.wav")
            cpu.append(time.process_time() - start)
            assert result.wav
    return seconds, min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("command:", " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]))
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()),
          f"on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        r = Rtpengine(Path(d) / "rtpengine")
        r.start()
        try:
            times = asyncio.run(ng_rounds(r, args.calls))
        finally:
            r.stop()
    for command, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"ng {command:7s} n={len(ms)} p50 {statistics.median(ms):.3f} ms  "
              f"p99 {pct(ms, 0.99):.3f} ms  max {max(ms):.3f} ms")
    seconds, cpu = conversion(args.seconds, args.runs)
    print(f"conversion: {seconds:.0f} s of two-channel G.711 in {cpu * 1000:.1f} ms CPU "
          f"(best of {args.runs}): {seconds / cpu:.0f} s of audio per CPU second")


if __name__ == "__main__":
    main()
