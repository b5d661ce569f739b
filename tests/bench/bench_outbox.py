"""The daemon's CPU for webhooks against the outbox's backlog, with a slow receiver.

    .venv/bin/python tests/bench/bench_outbox.py [--backlogs 100,1000,10000] [--rate 100] \\
        [--seconds 30] [--delay 0.2] [--batch 0] [--old /work/main]

For each backlog B: a fresh calltrackd (embedded store) whose outbox already holds B
pending `call.ended` deliveries (written into its database before it starts, ~1.1 KB
each), one webhook endpoint on a local aiohttp receiver that answers 204 after --delay
seconds (200 ms: a real CRM), and a SIPp carrier calling a static number at --rate calls/s
for --seconds (3 events per call, or only call.ended with --events ended: the stream of new
events, each followed by the recorder's notify, as in production). Over the run after its
first 3 s it measures the daemon's CPU seconds (user + system, all threads, from /proc)
and the deliveries the receiver acknowledged, and prints CPU seconds per 1,000
deliveries, raw and net of a run with the same calls and no webhook (the SIP side).
With --batch N it adds a run per backlog whose endpoint has `batch = N`. With --old DIR it
runs the same steps with the code of the checkout DIR (PYTHONPATH) for comparison.

Also printed: deliveries/s, the receiver's distinct TCP connections (keep-alive: a few,
not one per request) and duplicates. Not part of the test run; figures taken while other
work loads the machine are noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

ROOT = Path(__file__).resolve().parents[2]
WARMUP = 3.0


@dataclass
class Receiver:
    port: int
    delay: float
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        await asyncio.sleep(self.delay)
        now = time.monotonic()
        if request.headers.get("X-Calltrackd-Batch"):
            import json

            for e in json.loads(body):
                self.arrivals.append((now, e["event_id"]))
        else:
            self.arrivals.append((now, request.headers.get("X-Calltrackd-Delivery", "")))
        return web.Response(status=204)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/hook", self.handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port,
                                                backlog=1024).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the receiver did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def prefill(db: Path, backlog: int, url: str) -> None:
    """`backlog` pending call.ended deliveries, written as the daemon would write them."""
    from calltrackd.store.sqlite import SqliteStore
    from calltrackd.tracking.model import (
        Attribution,
        CallRecord,
        VisitorSession,
        WebhookEndpoint,
    )
    from calltrackd.webhooks.payload import build_deliveries

    session = VisitorSession(
        "s_bench", "bench", client_id="GA1.2.111.222", ym_uid="1690000000123",
        utm_source="google", utm_medium="cpc", utm_campaign="spring", utm_term="buy sofa",
        referrer="https://www.google.com/", landing_page="https://acme.example/sofas",
        custom={"product_id": "42"})
    endpoint = [WebhookEndpoint(url, "whsec_bench_secret", ("call.ended",))]

    async def run() -> None:
        store = SqliteStore(str(db))
        await store.open()
        now = time.time()
        try:
            for start in range(0, backlog, 500):
                records = [CallRecord(
                    f"c_pre{i}", "bench", STATIC_NUMBER, CALLER, datetime.now(UTC),
                    datetime.now(UTC), datetime.now(UTC), 4.2, 63.0, "answered", 200,
                    "caller", "sip:127.0.0.1", True, True,
                    Attribution("dynamic", session=session))
                    for i in range(start, min(backlog, start + 500))]
                await asyncio.gather(*(store.save_call(r, build_deliveries(
                    "call.ended", r, endpoint, now)) for r in records))
        finally:
            await store.close()

    asyncio.run(run())


@dataclass
class Run:
    label: str
    backlog: int
    batch: int
    calls_ok: int = 0
    calls_failed: int = 0
    deliveries: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    connections: int = 0
    duplicates: int = 0
    queue_left: float = 0.0

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0


def measure(procs: Procs, args: argparse.Namespace, rundir: Path, label: str, backlog: int,
            batch: int, webhooks: bool, code: str | None) -> Run:
    run = Run(label, backlog, batch)
    workdir = rundir / f"{label}-b{backlog}-x{batch}"
    (workdir / "daemon" / "var").mkdir(parents=True, exist_ok=True)
    recv = Receiver(free_port(), args.delay)
    recv.start()
    url = f"http://127.0.0.1:{recv.port}/hook"
    sip_port, http_port, pbx_port, uac_port = free_port(), free_port(), free_port(), free_port()
    toml = daemon_toml(sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
                       pool=pool_numbers(10), webhook_url=url if webhooks else None,
                       webhook_concurrency=args.old_concurrency
                       if code and args.old_concurrency else args.concurrency)
    if webhooks:
        events = '' if args.events == "all" else '  events = ["call.ended"]\n'
        toml = toml.replace('  secret = "whsec_bench_secret"\n',
                            '  secret = "whsec_bench_secret"\n' + events
                            + (f"  batch = {batch}\n" if batch > 1 else ""))
        prefill(workdir / "daemon" / "var" / "calltrackd.db", backlog, url)
    saved = os.environ.get("PYTHONPATH")
    try:
        if code:
            os.environ["PYTHONPATH"] = code
        daemon = Daemon(procs, workdir / "daemon", toml, sip_port=sip_port,
                        http_port=http_port, python=args.python)
        daemon.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        uas = start_uas(procs, workdir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        calls = int(args.rate * args.seconds)
        t0 = time.monotonic()
        uac = procs.start(
            [SIPP, "-sf", str(UAC_SCENARIO), "-s", STATIC_NUMBER, "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(args.rate), "-m", str(calls),
             "-l", str(args.rate * 12), "-d", "1000", "-nostdin", "-recv_timeout", "20000",
             "-timeout", f"{args.seconds + 60:.0f}s", "-trace_stat", "-stf", "uac_stat.csv",
             "-fd", "1", "-trace_err", f"127.0.0.1:{sip_port}"],
            cwd=workdir, out=workdir / "uac.out")
        time.sleep(WARMUP)
        cpu0, m0, n0 = tree_cpu(daemon.pid), time.monotonic(), len(recv.arrivals)
        wait_rusage(uac, args.seconds + 90)
        procs.procs.remove(uac)
        cpu1, m1, n1 = tree_cpu(daemon.pid), time.monotonic(), len(recv.arrivals)
        run.cpu, run.seconds, run.deliveries = cpu1 - cpu0, m1 - m0, n1 - n0
        st = read_stat_csv(workdir / "uac_stat.csv")
        run.calls_ok = stat_int(st, "SuccessfulCall(C)")
        run.calls_failed = stat_int(st, "FailedCall(C)")
        run.queue_left = daemon.metrics().get("calltrackd_webhook_queue", -1.0)
        del t0
        daemon.stop()
    finally:
        procs.stop_all()
        recv.stop()
    ids = [e for _, e in recv.arrivals]
    run.duplicates = len(ids) - len(set(ids))
    run.connections = len(recv.peers)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--backlogs", default="100,1000,10000")
    ap.add_argument("--rate", type=int, default=100, help="calls/s during the run (100)")
    ap.add_argument("--events", choices=("all", "ended"), default="all",
                    help="the endpoint's events: all three per call, or call.ended (all)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of a run (30)")
    ap.add_argument("--delay", type=float, default=0.2, help="receiver's answer time (0.2)")
    ap.add_argument("--concurrency", type=int, default=32, help="[webhooks] concurrency (32)")
    ap.add_argument("--old-concurrency", type=int, default=None,
                    help="[webhooks] concurrency for the --old runs (default: --concurrency)")
    ap.add_argument("--batch", type=int, default=0, help="also runs with batch = N")
    ap.add_argument("--old", default=None, help="a checkout to compare with (PYTHONPATH)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    install_signal_handlers()
    rundir = args.scratch / time.strftime("outbox-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd outbox CPU vs backlog: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}" + (f"; compared with {args.old}" if args.old
                                                else ""))
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['os']}, Python "
        f"{info['python']}, SIPp {info['sipp']}; load average at start: {loadavg()}")
    per_call = 3 if args.events == "all" else 1
    log(f"receiver answers 204 after {args.delay * 1000:.0f} ms; {args.rate} calls/s for "
        f"{args.seconds:.0f} s: {per_call * args.rate} new deliveries/s to one endpoint; "
        f"[webhooks] concurrency = {args.concurrency}")
    procs = Procs()
    codes: list[tuple[str, str | None]] = [("new", None)]
    if args.old:
        codes.append(("old", args.old))
    runs: list[Run] = []
    base: dict[str, float] = {}
    for label, code in codes:
        b = measure(procs, args, rundir, f"{label}-nohook", 0, 1, False, code)
        base[label] = b.cpu / b.seconds if b.seconds else 0.0
        log(f"{label}: no webhook, {b.calls_ok} calls: daemon CPU {base[label] * 100:.0f}% "
            f"(load {loadavg()})")
        for backlog in [int(x) for x in args.backlogs.split(",") if x.strip()]:
            for batch in ([1, args.batch] if args.batch > 1 and label == "new" else [1]):
                r = measure(procs, args, rundir, label, backlog, batch, True, code)
                runs.append(r)
                log(f"{label} backlog {backlog} batch {batch}: {r.deliveries} deliveries in "
                    f"{r.seconds:.0f} s, CPU {r.cpu:.1f} s, calls {r.calls_ok} ok "
                    f"{r.calls_failed} failed, queue left {r.queue_left:.0f} "
                    f"(load {loadavg()})")
    rows = []
    for r in runs:
        code_label = r.label
        net = r.cpu - base[code_label] * r.seconds
        per = r.cpu / r.deliveries * 1000 if r.deliveries else float("nan")
        per_net = net / r.deliveries * 1000 if r.deliveries else float("nan")
        rows.append([code_label, str(r.backlog), str(r.batch), str(r.deliveries),
                     f"{r.rate:.0f}", f"{r.cpu / r.seconds * 100:.0f}%", f"{per:.2f}",
                     f"{per_net:.2f}", str(r.connections), str(r.duplicates)])
    log("\n" + table(["code", "backlog", "batch", "deliveries", "per s", "daemon CPU",
                      "CPU s / 1000", "net of SIP", "connections", "dups"], rows))
    log(f"(net of SIP: minus the CPU of the same calls without a webhook; load average at "
        f"the end {loadavg()}; logs in {rundir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
