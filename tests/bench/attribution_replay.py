"""A simulated day (tests/bench/day.py) replayed through the running daemon: visitors get
numbers over the HTTP API (POST /v1/sessions, pings every third of the reservation),
callers dial over SIP (a minimal UDP UAC; SIPp answers as the PBX with 486), and the
benchmark, which knows who really called, compares each call's attribution with the
truth, beside /v1/stats' estimated_accuracy, recommended_size and size_curve.

Every pool size is a tracker of its own in one daemon, each replaying the same day at
the same time. Time is compressed by --speed (reservation, grace and every delay alike):
at 360 a day takes 4 minutes and the 48 h tail of late callers 8 more.

    .venv/bin/python -m tests.bench.attribution_replay --sizes 80,120,160,200,240,320

It prints, per pool size: calls, the true accuracy, estimated_accuracy, the trade's
accuracy, the simulator's figure for that size (`replayed_accuracy`, and the size
curve there, which passes through the pool's own calls) and its recommended_size; the
calibration of confidence >= 0.9; expired attributions by age; and the smallest size
that reaches 97% of the best true accuracy of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.conftest import ADMIN, SCENARIOS, free_port, need, start_daemon

from .day import Visitor, make_day


def number(tracker: int, i: int) -> str:
    return f"+7495{10 + tracker:02d}{i:05d}"


def caller_of(tracker: int, visitor: int) -> str:
    return f"+7916{10 + tracker:02d}{visitor:05d}"


def config(sip: int, http: int, pbx: int, sizes: Sequence[int], ttl: float,
           grace: float) -> str:
    out = [f"""
[sip]
listen = ["udp:127.0.0.1:{sip}"]
shutdown_grace = "2s"
[http]
listen = "127.0.0.1:{http}"
admin_token = "{ADMIN}"
session_rate_limit = 0
[store]
url = "sqlite:///./var/calltrackd.db"
[log]
level = "warning"
[[carriers]]
name = "loopback"
addresses = ["127.0.0.0/8"]
"""]
    for j, size in enumerate(sizes):
        numbers = [number(j, i) for i in range(1, size + 1)]
        out.append(f"""
[[trackers]]
id = "t{size}"
public_key = "pk_t{size}"
default_number = "{number(j, 0)}"
forward = ["sip:127.0.0.1:{pbx};transport=udp"]
reservation_ttl = {ttl}
attribution_grace = {grace}
  [[trackers.pools]]
  name = "web"
  sources = ["*"]
  numbers = {json.dumps(numbers)}
""")
    return "".join(out)


class Uac(asyncio.DatagramProtocol):
    """A carrier that sends INVITEs and ACKs their final answers (UDP, RFC 3261 §17.1.1)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[str, asyncio.Future[tuple[int, str]]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        head, _, _ = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        if not lines[0].startswith("SIP/2.0 "):
            return
        code = int(lines[0].split()[1])
        headers = {ln.partition(":")[0].strip().lower(): ln.partition(":")[2].strip()
                   for ln in lines[1:]}
        fut = self.waiting.get(headers.get("call-id", ""))
        if code >= 200 and fut is not None and not fut.done():
            fut.set_result((code, headers.get("to", "")))

    async def call(self, target: tuple[str, int], did: str, caller: str) -> int:
        assert self.transport is not None
        local = self.transport.get_extra_info("sockname")
        call_id = secrets.token_hex(12) + "@bench"
        branch = "z9hG4bK" + secrets.token_hex(8)
        tag = secrets.token_hex(4)
        via = f"SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport"
        common = (f"Via: {via}\r\nFrom: <sip:{caller}@{local[0]}>;tag={tag}\r\n"
                  f"Call-ID: {call_id}\r\nMax-Forwards: 70\r\n")
        invite = (f"INVITE sip:{did}@{target[0]}:{target[1]} SIP/2.0\r\n{common}"
                  f"To: <sip:{did}@{target[0]}>\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:{caller}@{local[0]}:{local[1]}>\r\n"
                  "Content-Length: 0\r\n\r\n").encode()
        fut: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = fut
        try:
            for _ in range(8):  # Timer A: 0.5 s, doubling up to 4 s
                self.transport.sendto(invite, target)
                try:
                    code, to = await asyncio.wait_for(asyncio.shield(fut), 0.5)
                    break
                except TimeoutError:
                    continue
            else:
                return 0
        finally:
            del self.waiting[call_id]
        ack = (f"ACK sip:{did}@{target[0]}:{target[1]} SIP/2.0\r\n{common}To: {to}\r\n"
               "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
        self.transport.sendto(ack, target)
        return code


@dataclass
class Run:
    size: int
    index: int
    sessions: dict[int, str] = field(default_factory=dict)  # visitor → session id
    shown: dict[int, str] = field(default_factory=dict)  # visitor → number on its page
    placed: dict[str, int] = field(default_factory=dict)  # caller → visitor
    failed_calls: int = 0
    http_errors: int = 0


class Bench:
    def __init__(self, base: str, sip: tuple[str, int], day: Sequence[Visitor],
                 sizes: Sequence[int], speed: float, ttl: float) -> None:
        self.base, self.sip, self.day, self.speed, self.ttl = base, sip, day, speed, ttl
        self.runs = [Run(s, j) for j, s in enumerate(sizes)]
        self.lag: list[float] = []  # how late pings went out (wall seconds)
        self.t0 = 0.0

    def wall(self, day_seconds: float) -> float:
        return self.t0 + day_seconds / self.speed

    async def until(self, day_seconds: float) -> None:
        delay = self.wall(day_seconds) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def post(self, http: aiohttp.ClientSession, path: str,
                   body: dict[str, Any] | None, run: Run) -> dict[str, Any] | None:
        try:
            async with http.post(self.base + path, json=body or {}) as r:
                if r.status == 200:
                    return dict(await r.json())
        except (aiohttp.ClientError, TimeoutError):
            pass
        run.http_errors += 1
        return None

    async def visit(self, http: aiohttp.ClientSession, uac: Uac, run: Run, v: Visitor
                    ) -> None:
        answer = await self.post(http, "/v1/sessions", {"tracker": f"pk_t{run.size}",
                                                        "utm_source": "google",
                                                        "utm_medium": "cpc"}, run)
        if answer is None:
            return
        sid = run.sessions[v.index] = answer["session_id"]
        run.shown[v.index] = answer["number"]
        call_at = v.start + v.call.at if v.call else None
        every = self.ttl * self.speed / 3  # day seconds between pings
        k = 1
        while v.start + k * every <= v.end:
            at = v.start + k * every
            if call_at is not None and call_at < at and v.call is not None \
                    and v.call.kind == "during":
                await self.until(call_at)
                await self.dial(uac, run, v)
                call_at = None
            await self.until(at)
            self.lag.append(time.monotonic() - self.wall(at))
            again = await self.post(http, f"/v1/sessions/{sid}/ping", None, run)
            if again is not None:
                run.shown[v.index] = again["number"]
            k += 1
        if call_at is not None:
            await self.until(call_at)
            await self.dial(uac, run, v)

    async def dial(self, uac: Uac, run: Run, v: Visitor) -> None:
        caller = caller_of(run.index, v.index)
        run.placed[caller] = v.index
        code = await uac.call(self.sip, run.shown[v.index], caller)
        if code == 0:
            run.failed_calls += 1

    async def replay(self) -> None:
        loop = asyncio.get_running_loop()
        transport, uac = await loop.create_datagram_endpoint(Uac, local_addr=("127.0.0.1", 0))
        uac.transport = transport
        conn = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
            self.t0 = time.monotonic() + 1.0
            tasks = []
            for v in self.day:
                await self.until(v.start)
                for run in self.runs:
                    tasks.append(asyncio.create_task(self.visit(http, uac, run, v)))
            await asyncio.gather(*tasks)


def fetch(base: str, path: str) -> Any:
    import urllib.request

    req = urllib.request.Request(base + path,
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def all_calls(base: str, tracker: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = f"/v1/calls?tracker={tracker}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        page = fetch(base, q)
        out += page["calls"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="80,120,160,200,240,320")
    ap.add_argument("--visits", type=int, default=5000)
    ap.add_argument("--speed", type=float, default=360.0,
                    help="time compression: day seconds per wall second")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--grace", type=float, default=1800.0, help="attribution_grace, s")
    ap.add_argument("--tail-hours", type=float, default=48.0,
                    help="how long after the day late callers are waited for")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    day = make_day(args.visits, seed=args.seed, late_max_hours=args.tail_hours)
    ttl = 360.0 / args.speed
    grace = args.grace / args.speed
    tmp = Path(tempfile.mkdtemp(prefix="attribution-replay-"))
    sip, http, pbx = free_port(), free_port(), free_port()
    duration = (86400.0 + args.tail_hours * 3600.0 + 3600.0) / args.speed + 120
    pbx_proc = subprocess.Popen(
        [need("sipp"), "-sf", str(SCENARIOS / "uas_486.xml"), "-i", "127.0.0.1", "-p",
         str(pbx), "-nostdin", "-m", "1000000", "-timeout", f"{int(duration + 300)}s"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=tmp)
    daemon = start_daemon(tmp, config(sip, http, pbx, sizes, ttl, grace), sip, http)
    started = time.time()
    try:
        bench = Bench(daemon.base, ("127.0.0.1", sip), day, sizes, args.speed, ttl)
        wall0 = time.monotonic()
        asyncio.run(bench.replay())
        replay_s = time.monotonic() - wall0
        time.sleep(2)
        report(bench, daemon.base, sizes, started, replay_s, args)
    finally:
        daemon.stop()
        pbx_proc.kill()
        pbx_proc.wait(10)


def report(bench: Bench, base: str, sizes: Sequence[int], started: float, replay_s: float,
           args: argparse.Namespace) -> None:
    since = int(started) - 5
    rows = []
    breakdown: list[str] = []
    sure = sure_right = 0
    for run in bench.runs:
        tracker = f"t{run.size}"
        t0 = time.monotonic()
        stats = fetch(base, f"/v1/stats?tracker={tracker}&since={since}")["trackers"][0]
        stats_s = time.monotonic() - t0
        t0 = time.monotonic()
        fetch(base, f"/v1/stats?tracker={tracker}&since={since}")
        cached_s = time.monotonic() - t0
        pool = stats["pools"][0]
        curve = {p["size"]: p["estimated_accuracy"] for p in pool["size_curve"]}
        right = total = 0
        kinds: dict[str, list[float]] = {}
        for c in all_calls(base, tracker):
            v = run.placed.get(c["caller"])
            if v is None:
                continue
            att = c["attribution"] or {}
            ok = (att.get("session") or {}).get("id") == run.sessions.get(v)
            total += 1
            right += ok
            conf = att.get("confidence") or 0.0
            k = kinds.setdefault(att.get("kind") or "none", [0, 0.0, 0])
            k[0] += 1
            k[1] += conf
            k[2] += ok
            if conf >= 0.9:
                sure += 1
                sure_right += ok
        rows.append((run, total, right / total if total else math.nan, stats, pool,
                     (pool.get("replayed_accuracy"), curve.get(run.size)), stats_s, cached_s))
        breakdown.append(f"{run.size}: " + ", ".join(
            f"{k} {int(v[0])} calls, confidence sum {v[1]:.1f}, right {int(v[2])}"
            for k, v in sorted(kinds.items())))
    print(f"# {' '.join(sys.argv)}")
    print(f"# {args.visits} visits, speed {args.speed:g}x (reservation {360 / args.speed:.3f} s,"
          f" grace {args.grace / args.speed:.3f} s), replay took {replay_s:.0f} s;"
          f" ping lateness p50 {pct(bench.lag, 50) * 1000:.0f} ms"
          f" p99 {pct(bench.lag, 99) * 1000:.0f} ms (wall)")
    print("| pool | calls | true accuracy | estimated_accuracy | trade accuracy |"
          " replayed at this size (curve there) | recommended_size | attainable (curve) |"
          " /v1/stats s (first, cached) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, total, true_acc, st, pool, (sim, at), stats_s, cached_s in rows:
        print(f"| {run.size} | {total} | {true_acc:.3f} | {st['estimated_accuracy']} |"
              f" {st['accuracy']} | {sim} ({at}) | {pool['recommended_size']} |"
              f" {pool.get('attainable_accuracy')} | {stats_s:.2f}, {cached_s:.2f} |")
    best = max(r[2] for r in rows)
    reach = [r[0].size for r in rows if r[2] >= 0.97 * best]
    print(f"best true accuracy {best:.3f}; smallest size tried reaching 97% of it"
          f" ({0.97 * best:.3f}): {min(reach) if reach else None}")
    print(f"confidence >= 0.9: {sure_right}/{sure} right"
          f" ({sure_right / sure if sure else math.nan:.3f})")
    print("failed calls " + ", ".join(f"{r.size}: {r.failed_calls}" for r in bench.runs)
          + "; HTTP errors " + ", ".join(f"{r.size}: {r.http_errors}" for r in bench.runs))
    print("by attribution kind:\n  " + "\n  ".join(breakdown))
    print("per-size curve (size: estimated) of the largest pool: "
          + ", ".join(f"{p['size']}: {p['estimated_accuracy']}"
                      for p in rows[-1][4]["size_curve"]))


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q / 100))]


if __name__ == "__main__":
    main()
