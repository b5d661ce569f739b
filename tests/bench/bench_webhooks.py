"""Webhook deliveries per second from one calltrackd node.

    .venv/bin/python tests/bench/bench_webhooks.py [--calls 6000] [--rate 400] \\
        [--concurrency 4,32]

Runs a local aiohttp receiver (answers 204 at once, checks the signature of the first
deliveries, records each arrival's time and event_id) and, for each `[webhooks]
concurrency` given, a fresh calltrackd (embedded store, a tracker with one webhook to the
receiver, every event) plus a SIPp PBX and caller: --calls calls of 1 s at --rate calls/s
to a static number, 3 events each (call.started, call.answered, call.ended). It waits
until every event arrived (or nothing arrived for 20 s) and prints:

  events       deliveries expected (3 x calls completed) and received, duplicates
  while calls  deliveries/s while the calls were running (events are produced at about
               3 x rate/s: when the queue stays near 0 the receiver saw what was produced,
               a lower bound of the capacity)
  drain        deliveries/s after the last call, while the backlog drained (only the
               webhook worker busy: the capacity, when there was a backlog)
  peak 5 s     the best 5-second window
  max queue    the highest `calltrackd_webhook_queue` seen
Helpers come from compare.py next to it. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

from aiohttp import web

from tests.bench.compare import (
    CALLER,
    SIPP,
    STATIC_NUMBER,
    UAC_SCENARIO,
    Daemon,
    Procs,
    code_version,
    daemon_toml,
    failure_causes,
    free_port,
    install_signal_handlers,
    loadavg,
    log,
    machine,
    pool_numbers,
    read_stat_csv,
    start_uas,
    stat_int,
    table,
    tree_cpu,
    wait_rusage,
    wait_udp_bound,
)

SECRET = "whsec_bench_secret"  # what compare.daemon_toml writes


@dataclass
class Receiver:
    """An aiohttp server on its own thread and loop."""

    port: int
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    bad_signatures: int = 0
    checked: int = 0
    check_first: int = 300
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        if self.checked < self.check_first:
            self.checked += 1
            try:
                fields = dict(part.split("=", 1) for part in
                              request.headers.get("X-Calltrackd-Signature", "").split(","))
                mac = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body,
                               hashlib.sha256).hexdigest()
                if not hmac.compare_digest(mac, fields["v1"]):
                    self.bad_signatures += 1
            except (KeyError, ValueError):
                self.bad_signatures += 1
        self.arrivals.append((now, request.headers.get("X-Calltrackd-Delivery", "")))
        return web.Response(status=204)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_post("/hook", self.handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the webhook receiver did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class Run:
    concurrency: int
    calls_ok: int = 0
    calls_failed: int = 0
    causes: str = ""
    expected: int = 0
    received: int = 0
    unique: int = 0
    calls_rate: float = 0.0
    drain_rate: float | None = None
    peak5: float = 0.0
    max_queue: float = 0.0
    daemon_cpu: float = 0.0
    span: float = 0.0
    bad_signatures: int = 0
    queue_at_end_of_calls: float = 0.0
    queue_left: float = 0.0


def measure(procs: Procs, concurrency: int, args: argparse.Namespace, rundir: Path) -> Run:
    run = Run(concurrency)
    workdir = rundir / f"c{concurrency}"
    workdir.mkdir(parents=True, exist_ok=True)
    recv = Receiver(free_port())
    recv.start()
    sip_port, http_port, pbx_port, uac_port = free_port(), free_port(), free_port(), free_port()
    queue: list[tuple[float, float]] = []
    stop = threading.Event()

    try:
        daemon = Daemon(procs, workdir / "daemon",
                        daemon_toml(sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
                                    pool=pool_numbers(10),
                                    webhook_url=f"http://127.0.0.1:{recv.port}/hook",
                                    webhook_concurrency=concurrency),
                        sip_port=sip_port, http_port=http_port, python=args.python)
        daemon.start()

        def sample() -> None:
            while not stop.is_set():
                m = daemon.metrics()
                if m:
                    queue.append((time.monotonic(), m.get("calltrackd_webhook_queue", 0.0)))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        uas = start_uas(procs, workdir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        cpu0 = tree_cpu(daemon.pid)
        t_start = time.monotonic()
        uac = procs.start(
            [SIPP, "-sf", str(UAC_SCENARIO), "-s", STATIC_NUMBER, "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(args.rate),
             "-m", str(args.calls), "-l", str(args.rate * 12), "-d", "1000", "-nostdin",
             "-recv_timeout", "20000", "-timeout", f"{args.calls / args.rate + 90:.0f}s",
             "-trace_stat", "-stf", "uac_stat.csv", "-fd", "1", "-trace_err",
             f"127.0.0.1:{sip_port}"],
            cwd=workdir, out=workdir / "uac.out")
        wait_rusage(uac, args.calls / args.rate + 120)
        procs.procs.remove(uac)
        t_calls_end = time.monotonic()
        st = read_stat_csv(workdir / "uac_stat.csv")
        run.calls_ok = stat_int(st, "SuccessfulCall(C)")
        run.calls_failed = stat_int(st, "FailedCall(C)")
        run.causes = failure_causes(st)
        run.expected = 3 * run.calls_ok
        # wait for the backlog to drain: every event, or 20 s without a new arrival
        deadline = time.monotonic() + args.max_drain
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len({eid for _, eid in list(recv.arrivals)})
            if n >= run.expected:
                time.sleep(1.0)  # late duplicates
                break
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > 20:
                break
            time.sleep(0.5)
        run.daemon_cpu = (tree_cpu(daemon.pid) - cpu0) / (time.monotonic() - t_start) * 100
        run.queue_left = daemon.metrics().get("calltrackd_webhook_queue", -1.0)
        stop.set()
        sampler.join(10)
        daemon.stop()
    finally:
        stop.set()
        procs.stop_all()
        recv.stop()

    arrivals = sorted(recv.arrivals)
    run.received = len(arrivals)
    run.unique = len({eid for _, eid in arrivals})
    run.bad_signatures = recv.bad_signatures
    run.max_queue = max((q for _, q in queue), default=0.0)
    before = [q for t, q in queue if t <= t_calls_end]
    run.queue_at_end_of_calls = before[-1] if before else 0.0
    if arrivals:
        times = [t for t, _ in arrivals]
        run.span = times[-1] - times[0]
        during = [t for t in times if t <= t_calls_end]
        if during:
            run.calls_rate = len(during) / max(1e-3, t_calls_end - times[0])
        after = [t for t in times if t > t_calls_end]
        if len(after) > 100 and run.queue_at_end_of_calls > 100:
            run.drain_rate = len(after) / max(1e-3, after[-1] - t_calls_end)
        # best 5 s window
        j = 0
        for i, t in enumerate(times):
            while times[j] < t - 5.0:
                j += 1
            run.peak5 = max(run.peak5, (i - j + 1) / 5.0)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=6000, help="calls (3 events each) (6000)")
    ap.add_argument("--rate", type=int, default=400, help="calls/s (400)")
    ap.add_argument("--concurrency", default="4,32",
                    help="[webhooks] concurrency values to measure, comma-separated (4,32)")
    ap.add_argument("--max-drain", type=float, default=300.0,
                    help="longest wait for the backlog after the calls, s (300)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    args = ap.parse_args(argv)
    install_signal_handlers()
    rundir = args.scratch / time.strftime("webhooks-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd webhook deliveries: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['os']}, kernel "
        f"{info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    log(f"{args.calls} calls of 1 s at {args.rate}/s = {3 * args.rate} events/s produced for "
        f"{args.calls / args.rate:.0f} s; receiver on loopback answers 204 at once")
    procs = Procs()
    runs = []
    for c in [int(x) for x in args.concurrency.split(",") if x.strip()]:
        log(f"\nconcurrency {c}: load average {loadavg()}")
        r = measure(procs, c, args, rundir)
        runs.append(r)
        log(f"  calls {r.calls_ok} ok, {r.calls_failed} failed"
            + (f" ({r.causes})" if r.causes else "")
            + f"; events: {r.expected} expected, {r.received} deliveries received, {r.unique} "
              f"distinct ({r.received - r.unique} duplicates); queue left "
              f"{r.queue_left:.0f}; bad signatures {r.bad_signatures} of the first "
              f"{min(300, r.received)}")
    rows = [[str(r.concurrency), f"{r.unique}/{r.expected}", str(r.received - r.unique),
             f"{r.calls_rate:.0f}",
             "-" if r.drain_rate is None else f"{r.drain_rate:.0f}", f"{r.peak5:.0f}",
             f"{r.max_queue:.0f}", f"{r.queue_at_end_of_calls:.0f}", f"{r.span:.1f}",
             f"{r.daemon_cpu:.0f}%"] for r in runs]
    log("\n" + table(["concurrency", "distinct/expected", "dups", "while calls /s", "drain /s",
                      "peak 5 s /s", "max queue", "queue at end", "span s", "daemon CPU"],
                     rows))
    log("(deliveries/s count every POST the receiver answered, duplicates included; drain /s: "
        "after the last call, only when a backlog of > 100 was left, '-' = the deliveries kept "
        "up with the calls)")
    log(f"load average at the end: {loadavg()}")
    lost = any(r.unique < r.expected or r.bad_signatures for r in runs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
