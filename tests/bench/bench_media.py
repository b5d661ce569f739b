"""rtpengine ng round trips and recording conversion speed.

    .venv/bin/python tests/bench/bench_media.py [--calls 1000] [--seconds 60]
    .venv/bin/python tests/bench/bench_media.py --parallel 50


Starts a real rtpengine (userspace, loopback, temporary directory, as the tests do) and
runs --calls sequential calls through calltrackd's ng client: offer (recording on),
answer, delete, timing each command's round trip (p50, p99, max). Then converts a
synthetic recording of --seconds seconds (G.711 both ways, 50 packets/s each, written as
rtpengine writes its pcaps) to WAV several times and prints the seconds of audio
converted per CPU second. Not part of the test run.

--parallel N: N recorded calls at once end to end: the daemon (media anchored, recording
on) with a real rtpengine, one SIPp carrier placing N calls within a second and one SIPp
PBX, both playing 7 s of G.711 A-law RTP; waits for every `call.recording` webhook and
checks each WAV (length against the talk time, non-silent on both channels); prints the
CPU seconds calltrackd and rtpengine used per recorded call.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from calltrackd.media.ng import NgClient  # noqa: E402
from calltrackd.media.recording import convert, parse_metadata  # noqa: E402
from tests.audio import ipv4_udp, pcap, rtp_packets, tone  # noqa: E402
from tests.integration.rtpengine import Rtpengine  # noqa: E402
from tests.integration.test_media_calls import DID, TALK_MS, config  # noqa: E402
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parallel(n: int) -> None:
    from tests.audio import rms
    from tests.integration.conftest import ADMIN, Receiver, Sipp, free_port, start_daemon

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rtp = Rtpengine(tmp / "rtpengine")
        rtp.start()
        receiver = Receiver(free_port())
        receiver.start()
        sip, http, pbx_port = free_port(), free_port(), free_port()
        daemon = start_daemon(tmp, config(sip, http, pbx_port, rtp, tmp / "rec",
                                          receiver.url), sip, http)
        assert rtp.proc is not None
        try:
            cpu0 = cpu_seconds(daemon.proc.pid), cpu_seconds(rtp.proc.pid)
            t0 = time.monotonic()
            pbx = Sipp(tmp, "pbx", "uas_answer_rtp.xml", pbx_port, "-m", str(n),
                       "-timeout", "120s", "-mi", "127.0.0.1", "-mp", str(free_port()))
            carrier = Sipp(tmp, "carrier", "uac_call_rtp.xml", free_port(), "-s", DID,
                           "-m", str(n), "-l", str(n), "-r", str(n), "-rp", "1000",
                           "-timeout", "120s", "-d", str(TALK_MS), "-mi", "127.0.0.1",
                           "-mp", str(free_port()), remote=f"127.0.0.1:{sip}")
            res = carrier.wait(180)
            pbx.wait(30)
            deadline = time.monotonic() + 120
            while len(receiver.events("call.recording")) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            wall = time.monotonic() - t0
            cpu1 = cpu_seconds(daemon.proc.pid), cpu_seconds(rtp.proc.pid)
            events = [e["json"]["call"] for e in receiver.events("call.recording")]
            stats = res.stats
            print(f"SIPp carrier: {stats.get('SuccessfulCall(C)')} of {n} calls successful")
            good = 0
            for call in events:
                req = urllib.request.Request(daemon.base + call["recording"]["url"],
                                             headers={"Authorization": f"Bearer {ADMIN}"})
                with urllib.request.urlopen(req, timeout=10) as resp, \
                        wave.open(io.BytesIO(resp.read())) as w:
                    seconds = w.getnframes() / w.getframerate()
                    samples = memoryview(w.readframes(w.getnframes())).cast("h")
                if abs(seconds - call["talk_seconds"]) <= 1.0 and rms(samples[0::2]) > 300 \
                        and rms(samples[1::2]) > 300:
                    good += 1
            print(f"recordings: {len(events)} call.recording events, {good} WAVs with the "
                  "talk time's length (±1 s) and audio on both channels")
            ours, theirs = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            print(f"wall {wall:.1f} s; CPU calltrackd {ours:.2f} s ({ours / n * 1000:.1f} ms "
                  f"per recorded call), rtpengine {theirs:.2f} s ({theirs / n * 1000:.1f} ms "
                  "per call)")
        finally:
            daemon.stop()
            receiver.stop()
            rtp.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=0)
    args = ap.parse_args()
    print("command:", " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]))
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()),
          f"on {os.cpu_count()} CPUs")
    if args.parallel:
        parallel(args.parallel)
        return
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
