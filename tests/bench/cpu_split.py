"""The daemon's CPU per call, split into SIP, records, webhooks and the tracking API.

    .venv/bin/python tests/bench/cpu_split.py                  # 4 steps x 3 rounds, ~8 min
    .venv/bin/python tests/bench/cpu_split.py --rate 50 --seconds 10 --rounds 1
    .venv/bin/python tests/bench/cpu_split.py --profile        # + a cProfile'd run

Ablation on a running daemon. Every run starts a fresh calltrackd (embedded SQLite store,
one tracker whose pool holds one number per call), a SIPp PBX (180 at once, 200 after
200 ms) and, when the step has them, a local aiohttp webhook receiver (answers 204 at
once). It reads the daemon's CPU from /proc/<pid>/stat (utime + stime, every thread) while
the daemon sits idle for --idle seconds (the idle baseline), then over the measured
window: --rate calls/s for --seconds (calls of 1 s over UDP on 127.0.0.1, dialling the
pool's numbers in order), until every call has ended, every expected webhook has arrived
and --tail seconds more for the writes behind. The idle baseline x the window is
subtracted, and the rest divided by the calls that succeeded. The steps add one part
each:

  sip        the calls only: the daemon's recorder hooks only count the call (no
             attribution, no CDR, no outbox): tests/bench/benchkit/ablate.py --no-records
  records    + the call records: the attribution lookup at call time and the CDR written
             at the call's start, answer and end
  webhooks   + the tracker's webhook to the receiver: call.started, call.answered and
             call.ended for every call, through the outbox, signed
  visitors   + one site visit per call through the HTTP API, as t.js makes it:
             GET /t.js, POST /v1/sessions (a new session: a number reserved), --pings
             POST /v1/sessions/<id>/ping (renewals), the last --lead seconds before that
             number is called. Visits run at the call rate, --lead seconds ahead of SIPp.

Every step's daemon runs with its load shedding off (ablate.py --no-shedding; --shedding
keeps it): on a shared machine the loop is descheduled for tens of milliseconds, which
sheds calls at rates the daemon sustains, and the steps would not carry the same calls.

The difference per call between one step and the one before is that part's cost. Steps
run in rounds (sip, records, webhooks, visitors, then again), so that a change in the
machine's load falls on every step alike; the summary gives the median of the --rounds
runs of each step, their spread (min-max) and the part's spread from the differences
within each round. The machine is shared: every figure is as loaded as the load average
printed with it.

Not part of the test run. Every process it starts is killed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

import aiohttp

from tests.bench.bench_webhooks import Receiver
from tests.bench.benchkit.common import CALLER, PUBLIC_KEY, SIPP, UAC_INF_SCENARIO, log
from tests.bench.benchkit.daemon import (
    Daemon,
    all_calls,
    code_version,
    daemon_toml,
    paced,
    pool_numbers,
)
from tests.bench.benchkit.procs import (
    Procs,
    free_port,
    install_signal_handlers,
    loadavg,
    tree_cpu,
    wait_rusage,
    wait_udp_bound,
)
from tests.bench.benchkit.record import table
from tests.bench.benchkit.sipp import failure_causes, read_stat_csv, start_uas, stat_int
from tests.bench.benchkit.summary import machine

STEPS = ("sip", "records", "webhooks", "visitors")
PART = {"sip": "SIP (both legs: transport, transactions, B2BUA)",
        "records": "records (attribution lookup, CDR writes)",
        "webhooks": "webhooks (3 events per call to the receiver)",
        "visitors": "tracking API (t.js, session + reservation, renewals)"}
EVENTS_PER_CALL = 3  # call.started, call.answered, call.ended


@dataclass
class VisitStats:
    visits: int = 0
    ok: int = 0
    errors: int = 0
    requests: int = 0
    numbers: set[str] = field(default_factory=set)


@dataclass
class Run:
    step: str
    round: int
    load: str = ""
    ok: int = 0
    failed: int = 0
    causes: str = ""
    retrans: int = 0
    window: float = 0.0
    cpu: float = 0.0  # daemon CPU seconds over the window
    idle_rate: float = 0.0  # daemon CPU seconds per second while idle
    deliveries: int = 0
    expected: int = 0
    cdrs: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    visits: VisitStats = field(default_factory=VisitStats)
    notes: list[str] = field(default_factory=list)

    @property
    def net(self) -> float:
        return self.cpu - self.idle_rate * self.window

    @property
    def ms_per_call(self) -> float:
        return self.net / self.ok * 1000 if self.ok else float("nan")


def _visit_body(i: int, session_id: str | None = None) -> dict[str, object]:
    """What t.js posts (its body()): the landing page, the referrer, the cookies' ids."""
    return {"tracker": PUBLIC_KEY, "session_id": session_id,
            "referrer": "https://www.google.com/",
            "landing_page": f"https://shop.example/?utm_source=google&utm_medium=cpc"
                            f"&utm_campaign=bench&gclid=bench{i}",
            "ym_uid": None, "client_id": f"GA1.2.{i}.1764600000",
            "visitor_id": f"vbench{i:026d}", "ga_session_id": None, "custom": None,
            "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "bench"}


async def visitors(base: str, rate: float, count: int, lead: float, pings: int,
                   start: float, stats: VisitStats, stop: threading.Event) -> None:
    """Visit i starts at start + i / rate: GET /t.js, POST /v1/sessions, then `pings`
    renewals spread over the `lead` seconds before its number is called."""
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=128)) as client:
        async def visit(i: int) -> None:
            due = start + i / rate
            try:
                async with client.get(base + "/t.js") as r:
                    await r.read()
                    stats.requests += 1
                    if r.status != 200:
                        raise ValueError(f"t.js: HTTP {r.status}")
                async with client.post(base + "/v1/sessions", json=_visit_body(i)) as r:
                    data = await r.json()
                    stats.requests += 1
                    if r.status != 200 or data.get("kind") != "dynamic":
                        raise ValueError(f"session: HTTP {r.status} {data}")
                sid = data["session_id"]
                stats.numbers.add(data["number"])
                for k in range(pings):
                    await asyncio.sleep(max(0.0, due + lead * (k + 1) / (pings + 1)
                                            - time.monotonic()))
                    async with client.post(base + f"/v1/sessions/{sid}/ping", data=b"{}",
                                           headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        stats.requests += 1
                        if r.status != 200:
                            raise ValueError(f"ping: HTTP {r.status}")
                stats.ok += 1
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                stats.errors += 1

        stats.visits = await paced(rate, count, start, stop, visit, linger=lead + 30)


def measure(procs: Procs, step: str, rnd: int, args: argparse.Namespace, rundir: Path,
            profile: Path | None = None) -> Run:
    run = Run(step, rnd, load=loadavg())
    workdir = rundir / f"{step}-{rnd}"
    workdir.mkdir(parents=True, exist_ok=True)
    calls = args.rate * args.seconds
    pool = pool_numbers(calls)
    sip_port, http_port, pbx_port, uac_port = (free_port(), free_port(), free_port(),
                                               free_port())
    recv = Receiver(free_port()) if step in ("webhooks", "visitors") else None
    command = [args.python, "-m", "tests.bench.benchkit.ablate"]
    if profile is not None:
        command += ["--profile", str(profile)]
    if step == "sip":
        command.append("--no-records")
    if not args.shedding:
        command.append("--no-shedding")
    daemon = Daemon(procs, workdir / "daemon",
                    daemon_toml(sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
                                pool=pool, webhook_url=(f"http://127.0.0.1:{recv.port}/hook"
                                                        if recv else None)),
                    sip_port=sip_port, http_port=http_port, python=args.python,
                    command=command)
    inf = workdir / "numbers.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{n}\n" for n in pool))
    stop = threading.Event()
    try:
        if recv is not None:
            recv.start()
        daemon.start()
        uas = start_uas(procs, workdir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        time.sleep(args.settle)
        # the idle baseline
        a, ta = tree_cpu(daemon.pid), time.monotonic()
        time.sleep(args.idle)
        run.idle_rate = (tree_cpu(daemon.pid) - a) / (time.monotonic() - ta)
        # the window
        if profile is not None:
            os.kill(daemon.pid, signal.SIGUSR1)
        cpu0, t0 = tree_cpu(daemon.pid), time.monotonic()
        visit_thread = None
        if step == "visitors":
            visit_thread = threading.Thread(
                target=lambda: asyncio.run(visitors(daemon.base, args.rate, calls, args.lead,
                                                    args.pings, t0, run.visits, stop)),
                name="visitors", daemon=True)
            visit_thread.start()
            time.sleep(args.lead)
        uac = procs.start(
            [SIPP, "-sf", str(UAC_INF_SCENARIO), "-inf", str(inf), "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(args.rate), "-m", str(calls),
             "-l", str(args.rate * 12), "-d", "1000", "-nostdin", "-recv_timeout", "20000",
             "-timeout", f"{args.seconds + 90}s", "-trace_stat", "-stf", "uac_stat.csv",
             "-fd", "1", "-trace_err", f"127.0.0.1:{sip_port}"],
            cwd=workdir, out=workdir / "uac.out")
        wait_rusage(uac, args.seconds + 120)
        procs.procs.remove(uac)
        if visit_thread is not None:
            visit_thread.join(args.lead + 40)
        st = read_stat_csv(workdir / "uac_stat.csv")
        run.ok = stat_int(st, "SuccessfulCall(C)")
        run.failed = stat_int(st, "FailedCall(C)") + max(0, calls - stat_int(
            st, "OutgoingCall(C)"))
        run.causes = failure_causes(st)
        run.retrans = stat_int(st, "Retransmissions(C)")
        if recv is not None:
            run.expected = EVENTS_PER_CALL * run.ok
            deadline = time.monotonic() + args.max_drain
            while time.monotonic() < deadline:
                if len({eid for _, eid in list(recv.arrivals)}) >= run.expected:
                    break
                time.sleep(0.1)
        time.sleep(args.tail)
        run.cpu, run.window = tree_cpu(daemon.pid) - cpu0, time.monotonic() - t0
        if profile is not None:
            os.kill(daemon.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not profile.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # the file is written whole
        # checks, outside the window
        if recv is not None:
            run.deliveries = len({eid for _, eid in list(recv.arrivals)})
            if run.deliveries < run.expected:
                run.notes.append(f"webhooks {run.deliveries}/{run.expected} arrived")
            if recv.bad_signatures:
                run.notes.append(f"{recv.bad_signatures} bad signatures")
        if step != "sip":
            cdrs = all_calls(daemon)
            run.cdrs = len(cdrs)
            for c in cdrs:
                kind = (c.get("attribution") or {}).get("kind", "none")
                run.kinds[kind] = run.kinds.get(kind, 0) + 1
            if run.cdrs < run.ok:
                run.notes.append(f"CDRs {run.cdrs} < {run.ok} calls")
        if step == "visitors":
            v = run.visits
            if v.errors or v.ok < calls:
                run.notes.append(f"visits {v.ok}/{calls} ok, {v.errors} errors")
            if run.kinds.get("dynamic", 0) < run.ok:
                run.notes.append(f"dynamic attribution {run.kinds.get('dynamic', 0)}/{run.ok}")
        if not daemon.alive():
            run.notes.append("calltrackd died")
        problems = {k: v for k, v in daemon.log_problems().items()
                    if not k.startswith("info")}
        if problems:
            run.notes.append("daemon log: " + "; ".join(f"{k} x{v}" for k, v in
                                                        sorted(problems.items())[:4]))
    finally:
        stop.set()
        procs.stop_all()
        if recv is not None:
            recv.stop()
    return run


def cold_normalize(args: argparse.Namespace) -> float:
    """ms per number of tracking.numbers.normalize without its cache, over a run's pool."""
    from calltrackd.tracking.numbers import normalize

    pool = pool_numbers(args.rate * args.seconds)
    t = time.process_time()
    for n in pool:
        normalize.__wrapped__(n, "RU")
    return (time.process_time() - t) / len(pool) * 1000


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def summary(runs: Sequence[Run]) -> list[list[str]]:
    by_step = {s: [r for r in runs if r.step == s] for s in STEPS}
    rows: list[list[str]] = []
    prev: str | None = None
    for s in STEPS:
        rs = by_step[s]
        if not rs:
            continue
        ms = [r.ms_per_call for r in rs]
        med = statistics.median(ms)
        cpu_pct = statistics.median(r.net / r.window * 100 for r in rs)
        part = part_spread = "-"
        if prev is None:
            part, part_spread = f"{med:.3f}", spread(ms)
        elif by_step[prev]:
            part = f"{med - statistics.median(r.ms_per_call for r in by_step[prev]):+.3f}"
            before = {r.round: r.ms_per_call for r in by_step[prev]}
            diffs = [r.ms_per_call - before[r.round] for r in rs if r.round in before]
            part_spread = spread(diffs)
        what = PART[s]
        if prev is not None and STEPS.index(prev) != STEPS.index(s) - 1:
            what += f", with all between it and {prev}"
        retr = statistics.median(r.retrans / max(1, r.ok) for r in rs)
        rows.append([s, str(len(rs)), f"{med:.3f}", spread(ms), f"{cpu_pct:.0f}%",
                     f"{retr:.2f}", part, part_spread, what])
        prev = s
    return rows


def show_profile(path: Path, step: str, top: int) -> None:
    """The cProfile'd run: where the interpreted code spent its own time, by area."""
    st = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = st.stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        total += tt
        if "/calltrackd/" in filename:
            area = "calltrackd/" + filename.split("/calltrackd/", 1)[1].split("/")[0]
            area = area.removesuffix(".py")
        elif "site-packages/" in filename:
            area = filename.split("site-packages/", 1)[1].split("/")[0]
        elif filename == "~":  # C: a builtin, an extension's or a compiled module's method
            name = func.strip("<>{}")
            area = "C " + (name.split(" of '", 1)[1].split("'")[0] if " of '" in name
                           else name.removeprefix("built-in method ").rsplit(".", 1)[0])
        else:
            area = "stdlib " + Path(filename).stem
        areas[area] = areas.get(area, 0.0) + tt
    log(f"\n=== cProfile of one {step} run's window ({path}): own CPU time by area, "
        f"top {top}")
    log("(a CPU clock, time.process_time: every thread's CPU, charged to the main thread's "
        "frame; mypyc-compiled modules, the SIP core and the call engine when built, are "
        "invisible to cProfile: their time is folded into the interpreted frame that called "
        "them, or shows as their methods called from it; uvloop's own C is charged to "
        "asyncio's run(); cProfile slows the daemon, the more so in code made of many small "
        "Python calls, so only the shares mean something, and they lean that way)")
    rows = [[k, f"{v:.2f}", f"{v / total * 100:.1f}%"]
            for k, v in sorted(areas.items(), key=lambda kv: -kv[1])[:top]]
    log(table(["area", "own s", "share"], rows))
    log("\ntop functions by own time:")
    st.sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="The daemon's CPU per call, split into SIP, records, webhooks and the "
                    "tracking API, by ablation on a running daemon.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: cpu_split.py --rate 50 --seconds 10 --rounds 1")
    ap.add_argument("--rate", type=int, default=100, help="calls/s and visits/s (100)")
    ap.add_argument("--seconds", type=int, default=20, help="seconds of calls per run (20)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each step (3)")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help=f"comma-separated subset of {','.join(STEPS)}, in that order")
    ap.add_argument("--idle", type=float, default=5.0, help="idle baseline, s (5)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="pause after the daemon is healthy, before the baseline, s (1)")
    ap.add_argument("--lead", type=float, default=3.0,
                    help="a visit starts this long before its number is called, s (3)")
    ap.add_argument("--pings", type=int, default=1, help="renewals per visit (1)")
    ap.add_argument("--tail", type=float, default=2.0,
                    help="the window goes on this long after the last call and the last "
                         "webhook, for the writes behind, s (2)")
    ap.add_argument("--max-drain", type=float, default=60.0,
                    help="longest wait for the webhooks after the last call, s (60)")
    ap.add_argument("--shedding", action="store_true",
                    help="leave the daemon's load shedding on (off by default: on a shared "
                         "machine it sheds calls the daemon would carry)")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards one more run with the daemon under cProfile (a CPU "
                         "clock, over the window)")
    ap.add_argument("--profile-step", default="visitors", choices=STEPS,
                    help="the step of the profiled run (visitors)")
    ap.add_argument("--profile-top", type=int, default=25, help="rows of the profile (25)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if set(steps) - set(STEPS):
        ap.error(f"unknown step(s): {', '.join(sorted(set(steps) - set(STEPS)))}")
    steps = [s for s in STEPS if s in steps]
    install_signal_handlers()
    rundir = args.scratch / time.strftime("cpusplit-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd CPU per call, split: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"kernel {info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    log("NOTE: the figures are taken on a shared machine; other work running at the same "
        "time makes them noisy and higher than on an idle one (see the load averages)")
    log(f"{args.rate} calls/s for {args.seconds} s per run ({args.rate * args.seconds} calls "
        f"of 1 s, UDP on 127.0.0.1), steps {','.join(steps)} x {args.rounds} rounds; "
        f"visits {args.lead:g} s ahead, {args.pings} renewal(s) each; daemon CPU from "
        "/proc/<pid>/stat, minus its idle CPU/s x the window")
    head = ["step", "round", "load", "ok", "failed", "retr", "window s", "CPU s", "idle CPU/s",
            "net CPU s", "ms/call", "notes"]
    log("\n" + "  ".join(head))
    procs = Procs()
    runs: list[Run] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for s in steps:
                r = measure(procs, s, rnd, args, rundir)
                runs.append(r)
                notes = list(r.notes)
                if r.causes:
                    notes.insert(0, r.causes)
                if r.kinds:
                    notes.append("attribution " + ",".join(f"{k} {v}" for k, v in
                                                           sorted(r.kinds.items())))
                if r.visits.visits:
                    notes.append(f"{r.visits.requests} API requests")
                log("  ".join([s, str(rnd), r.load, str(r.ok), str(r.failed), str(r.retrans),
                               f"{r.window:.1f}", f"{r.cpu:.2f}", f"{r.idle_rate:.4f}",
                               f"{r.net:.2f}", f"{r.ms_per_call:.3f}", "; ".join(notes)]))
        profile = None
        if args.profile:
            profile = rundir / f"{args.profile_step}.prof"
            log(f"\n(profile run: {args.profile_step} under cProfile, load average "
                f"{loadavg()})")
            r = measure(procs, args.profile_step, 0, args, rundir, profile=profile)
            log(f"  profiled run: {r.ok} ok, {r.failed} failed, {r.ms_per_call:.3f} ms/call "
                "under cProfile")
    finally:
        procs.stop_all()
    rows = summary(runs)
    log(f"\n=== CPU per call, split (ms of daemon CPU per call; median of {args.rounds} "
        "runs, spread min-max; CPU: the net daemon CPU over the window, % of one core; "
        "retr/call: SIPp's retransmissions per call, which a starved daemon causes and "
        "which cost CPU too; part: the step's median minus the previous step's, its "
        "spread from the differences within each round)")
    log(table(["step", "runs", "ms/call", "spread", "CPU", "retr/call", "part ms/call",
               "part spread", "part"], rows))
    log(f"number normalisation on a cold cache, in this process: {cold_normalize(args):.3f} "
        "ms per call (routing's lru_cache'd normalize() of the dialled number: every run "
        "dials numbers its fresh daemon has not seen, which a long-running daemon has "
        "cached; part of the sip figure)")
    idle = [r.idle_rate for r in runs]
    if idle:
        log(f"idle baseline subtracted: median {statistics.median(idle) * 1000:.1f} ms CPU/s "
            f"(spread {min(idle) * 1000:.1f}-{max(idle) * 1000:.1f})")
    log(f"load average at the end: {loadavg()}")
    (rundir / "results.json").write_text(json.dumps(
        {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
         "runs": [{"step": r.step, "round": r.round, "load": r.load, "ok": r.ok,
                   "failed": r.failed, "window": r.window, "cpu": r.cpu,
                   "idle_rate": r.idle_rate, "ms_per_call": r.ms_per_call,
                   "kinds": r.kinds, "notes": r.notes} for r in runs]}, indent=1))
    log(f"results: {rundir / 'results.json'}")
    if profile is not None and profile.exists():
        with contextlib.suppress(OSError, ValueError, TypeError):
            show_profile(profile, args.profile_step, args.profile_top)
    bad = any(r.failed or r.notes for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
