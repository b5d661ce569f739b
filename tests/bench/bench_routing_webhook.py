"""The routing webhook's added set-up time at a call rate: the daemon as a process, SIPp
as the carrier (uac_rtt.xml: timer 2 is INVITE → 180 Ringing) and as the PBX
(uas_answer.xml), a real aiohttp receiver on loopback as the client's system answering
{"targets": ["pbx"]} at once. Two runs of the same calls: to a tracker without a
routing webhook, then to one with it; the difference of their INVITE → 180 percentiles
is what the webhook adds (the POST, and the wait for the attribution it carries). The
hooked tracker has `ringing = false`, so the 180 timed is the PBX's, not the one
calltrackd sends at once while it asks.

    .venv/bin/python -m tests.bench.bench_routing_webhook --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from tests.integration.conftest import (
    LOOPBACK,
    SCENARIOS,
    Receiver,
    daemon_toml,
    free_port,
    need,
    pbx_uri,
    start_daemon,
    tracker,
)

BENCH = Path(__file__).resolve().parent / "scenarios"
PLAIN, HOOKED = "+74990000091", "+74990000092"


class Answering(Receiver):
    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.attempts += 1
        return web.json_response({"targets": ["pbx"]})


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(tmp: Path, did: str, port: int, rate: int, seconds: int) -> list[float]:
    """INVITE → 180 of every call, in ms (SIPp's -trace_rtt samples of timer 2)."""
    out = tmp / did.lstrip("+")
    out.mkdir()
    subprocess.run(
        [need("sipp"), "-sf", str(BENCH / "uac_rtt.xml"), "-i", "127.0.0.1",
         "-p", str(free_port()), "-s", did, "-r", str(rate), "-m", str(rate * seconds),
         "-d", "200", "-nostdin", "-trace_rtt", "-rtt_freq", "1", "-timeout",
         f"{seconds + 60}s", "-key", "caller", "+79161234567", f"127.0.0.1:{port}"],
        cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        timeout=seconds + 120, check=False)
    samples: list[float] = []
    for path in out.glob("*_rtt.csv"):
        with path.open() as f:
            for row in csv.reader(f, delimiter=";"):
                # Date_ms;response_time_ms;rtd_no: timer 2 is INVITE → 180
                if len(row) >= 3 and row[2].strip() in ("2", "rtd2"):
                    samples.append(float(row[1]))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sip, http, pbx = free_port(), free_port(), free_port()
        client = Answering(free_port())
        client.start()
        uas = subprocess.Popen(
            [need("sipp"), "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.1",
             "-p", str(pbx), "-nostdin", "-timeout", "3600s"], cwd=tmp,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = daemon_toml(
            sip, http,
            tracker("plain", PLAIN, {"uri": pbx_uri(pbx), "name": "pbx"}),
            tracker("hooked", HOOKED, {"uri": pbx_uri(pbx), "name": "pbx"},
                    # ringing off: the 180 timed is the PBX's, after the webhook's answer
                    # (with it on, calltrackd's own 180 would come at once)
                    routing_webhook={"url": client.url, "secret": "s" * 24,
                                     "ringing": False}),
            log={"level": "info", "format": "json"},
            carriers=[{**LOOPBACK, "did_from": "ruri"}])
        daemon = start_daemon(tmp, text, sip, http)
        try:
            figures = {}
            for did in (PLAIN, HOOKED):
                samples = run(tmp, did, sip, args.rate, args.seconds)
                figures[did] = samples
                print(json.dumps({
                    "tracker": "hooked" if did == HOOKED else "plain", "calls": len(samples),
                    "invite_to_180_ms": {"p50": round(statistics.median(samples), 2),
                                         "p99": round(percentile(samples, 99), 2),
                                         "max": round(max(samples), 2)}}))
            added = {p: round(percentile(figures[HOOKED], p) - percentile(figures[PLAIN], p), 2)
                     for p in (50, 99)}
            print(json.dumps({"rate": args.rate, "webhook_requests": client.attempts,
                              "added_ms": added}))
            # as the daemon measured it: the whole wait, and the POST alone
            lines = [json.loads(line) for line in daemon.log_text().splitlines()
                     if '"b2bua.routing_webhook"' in line]
            for key in ("ms", "post_ms"):
                values = [float(x[key]) for x in lines]
                print(json.dumps({"daemon": key, "calls": len(values),
                                  "p50": round(statistics.median(values), 2),
                                  "p99": round(percentile(values, 99), 2)}))
        finally:
            daemon.stop()
            uas.kill()
            uas.wait(5)
            client.stop()


if __name__ == "__main__":
    main()
