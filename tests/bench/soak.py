"""Soak: calltrackd under steady calls and visitor traffic for minutes, watched over time.

    .venv/bin/python tests/bench/soak.py [--minutes 10] [--rate 50] [--store sqlite|redis] \\
        [--visitors 20] [--webhook-delay 0.2 [--webhook-batch N] | --no-webhooks] \\
        [--sample 10]

Starts calltrackd with tracking on (the embedded SQLite store, or a redis-server of its
own with --store redis), a SIPp PBX, a webhook receiver answering after --webhook-delay s
(a CRM) and a SIPp carrier placing --rate calls/s of --hold ms for --minutes. Every call
dials the pool number of a visitor session that was renewed through `POST /v1/sessions`
just before (as in compare.py); besides, --visitors new visitors per second ask for a
number (once the pool is all held they get the default number, as on a busy site).

Every --sample seconds it records the daemon's resident memory (VmRSS), its CPU (user and
system from /proc/PID/stat; the main thread, which runs the event loop, apart from the
other threads, from /proc/PID/task), calls up, the webhook queue and the event loop's
lag. The daemon's `calltrackd_loop_lag_seconds` is smoothed (it does not show one stall),
so a separate process also probes the daemon with a SIP OPTIONS every 20 ms over UDP: the
longest answer in an interval bounds the longest stall of the loop in it (an OPTIONS not
answered within 2 s counts as 2 s). The probes add 50 requests/s.

It prints a table over time, then RSS at start, end and peak, the longest stall, the CPU
split, calls placed/completed/failed/shed, webhooks delivered, CDRs and their attribution,
with the command and the load average (figures taken while other work loads the machine
are noisy). Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

import aiohttp

from tests.bench.bench_outbox import Receiver
from tests.bench.benchkit.procs import proc_cpu
from tests.bench.compare import (
    CALLER,
    HZ,
    PUBLIC_KEY,
    SIPP,
    UAC_INF_SCENARIO,
    Daemon,
    Procs,
    RenewStats,
    all_calls,
    code_version,
    daemon_toml,
    failure_causes,
    free_port,
    install_signal_handlers,
    loadavg,
    log,
    machine,
    parse_metrics,
    pool_numbers,
    read_stat_csv,
    renew_paced,
    reserve_sessions,
    rss_kb,
    start_uas,
    stat_int,
    table,
    wait_rusage,
    wait_udp_bound,
)

PROBE_EVERY = 0.02
PROBE_TIMEOUT = 2.0


# --- the outside view of the event loop: SIP OPTIONS round trips ---------------------


def probe(sip_port: int, out: Path, stop: MpEvent) -> None:
    """Send OPTIONS every PROBE_EVERY s; each second append `at max_rtt_ms lost` to `out`
    (`at`: time.monotonic() at the second's end, one clock for every process)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(PROBE_EVERY)
    port = sock.getsockname()[1]
    sent: dict[str, float] = {}
    window = time.monotonic()
    worst, lost, n = 0.0, 0, 0
    next_send = window
    with open(out, "a") as f:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                n += 1
                cid = f"soak-{n}-{uuid.uuid4().hex[:8]}"
                msg = (f"OPTIONS sip:probe@127.0.0.1:{sip_port} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}"
                       f";rport\r\nFrom: <sip:soak@127.0.0.1>;tag={n}\r\n"
                       f"To: <sip:probe@127.0.0.1>\r\nCall-ID: {cid}\r\nCSeq: 1 OPTIONS\r\n"
                       "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
                sock.sendto(msg.encode(), ("127.0.0.1", sip_port))
                sent[cid] = now
                next_send = max(next_send + PROBE_EVERY, now)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                data = b""
            now = time.monotonic()
            if data:
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"call-id:"):
                        at = sent.pop(line.split(b":", 1)[1].strip().decode(), None)
                        if at is not None:
                            worst = max(worst, now - at)
            for cid, at in list(sent.items()):
                if now - at > PROBE_TIMEOUT:
                    del sent[cid]
                    lost += 1
                    worst = max(worst, PROBE_TIMEOUT)
            if now - window >= 1.0:
                f.write(f"{now:.3f} {worst * 1000:.1f} {lost}\n")
                f.flush()
                window, worst, lost = now, 0.0, 0


def probe_windows(path: Path) -> list[tuple[float, float, int]]:
    try:
        lines = path.read_text().split("\n")
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            out.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return out


# --- the daemon from /proc and /metrics -------------------------------------------------


def run_queue_wait(pid: int) -> float:
    """Seconds the main thread of `pid` has been runnable but waiting for a core
    (/proc/PID/task/PID/schedstat, field 2): how much the machine starved the event loop."""
    try:
        return int((Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split())[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_split(pid: int) -> tuple[float, float, float]:
    """(user s, system s, main thread s) of process `pid` so far."""
    user = system = main = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        u, s = int(fields[11]) / HZ, int(fields[12]) / HZ
        user += u
        system += s
        if task.name == str(pid):
            main = u + s
    return user, system, main


@dataclass
class Sample:
    t: float
    rss_kb: int
    user: float
    system: float
    main: float
    metrics: dict[str, float]
    waited: float  # the main thread's time runnable but not on a core, s so far
    others: float  # CPU of every other process of the run (SIPp, this one, the probe), s


def sampler(daemon: Daemon, t0: float, every: float, stop: threading.Event,
            out: list[Sample], others: list[int]) -> None:
    seen: dict[int, float] = {}
    while True:
        if daemon.alive():
            try:
                user, system, main = cpu_split(daemon.pid)
                waited = run_queue_wait(daemon.pid)
                for p in others:  # a process that has exited keeps its last figure
                    seen[p] = proc_cpu(p) or seen.get(p, 0.0)
                rest = sum(seen.values())
                out.append(Sample(time.monotonic() - t0, rss_kb(daemon.pid), user, system,
                                  main, daemon.metrics(), waited, rest))
            except OSError:
                pass
        if stop.wait(every):
            return


# --- visitors who are not calling ---------------------------------------------------------


@dataclass
class VisitorStats:
    sent: int = 0
    dynamic: int = 0
    other: int = 0  # the default number: the pool is all held
    errors: int = 0


async def new_visitors(base: str, rate: float, stop: threading.Event,
                       stats: VisitorStats) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=16)) as client:
        async def one(i: int) -> None:
            body = {"tracker": PUBLIC_KEY, "client_id": f"GA1.2.9{i}.1",
                    "utm_source": "yandex", "utm_medium": "organic"}
            try:
                async with client.post(base + "/v1/sessions", json=body) as r:
                    data = await r.json()
                    if r.status != 200:
                        stats.errors += 1
                    elif data.get("kind") == "dynamic":
                        stats.dynamic += 1
                    else:
                        stats.other += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                stats.errors += 1

        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        while not stop.is_set() and rate > 0:
            due = int((time.monotonic() - start) * rate)
            while stats.sent < due and len(tasks) < 64:
                t = asyncio.create_task(one(stats.sent))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                stats.sent += 1
            await asyncio.sleep(0.02)
        if tasks:
            await asyncio.wait(tasks, timeout=15)


# --- the run ------------------------------------------------------------------------------


def start_redis(procs: Procs, rundir: Path) -> str:
    port = free_port(socket.SOCK_STREAM)
    d = rundir / "redis"
    d.mkdir()
    proc = procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(d)],
                       cwd=d, out=d / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise RuntimeError("redis-server did not listen")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (10)")
    ap.add_argument("--rate", type=int, default=50, help="calls per second (50)")
    ap.add_argument("--hold", type=int, default=2000, help="call length in ms (2000)")
    ap.add_argument("--visitors", type=float, default=20.0,
                    help="new visitors per second besides the callers' renewals (20)")
    ap.add_argument("--pool", type=int, default=1000, help="pool numbers (1000)")
    ap.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    ap.add_argument("--webhook-delay", type=float, default=0.2,
                    help="seconds the webhook receiver takes to answer (0.2)")
    ap.add_argument("--webhook-batch", type=int, default=1,
                    help="events per webhook request at most (the endpoint's `batch`; 1)")
    ap.add_argument("--no-webhooks", action="store_true", help="no webhook endpoint")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    args = ap.parse_args(argv)
    install_signal_handlers()
    seconds = int(args.minutes * 60)
    calls = args.rate * seconds
    rundir = args.scratch / time.strftime("soak-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    command = "tests/bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"calltrackd soak: {command}")
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"kernel {info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    hooks = "no webhooks" if args.no_webhooks else \
        f"webhooks to a receiver answering in {args.webhook_delay * 1000:.0f} ms" + \
        (f", up to {args.webhook_batch} events per request" if args.webhook_batch > 1 else "")
    log(f"{args.rate} calls/s of {args.hold} ms for {seconds} s ({calls} calls), tracking on, "
        f"{args.store}, {args.visitors:g} new visitors/s, {hooks}")

    procs = Procs()
    samples: list[Sample] = []
    stop = threading.Event()
    probe_stop = multiprocessing.get_context("spawn").Event()
    receiver: Receiver | None = None
    renew, visitors = RenewStats(), VisitorStats()
    sip_port, http_port, pbx_port, uac_port = free_port(), free_port(), free_port(), free_port()
    probe_file = rundir / "probe.txt"
    probe_proc = None
    threads: list[threading.Thread] = []
    try:
        if not args.no_webhooks:
            receiver = Receiver(free_port(socket.SOCK_STREAM), args.webhook_delay)
            receiver.start()
        config = daemon_toml(
            sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
            pool=pool_numbers(args.pool),
            webhook_url=None if receiver is None else f"http://127.0.0.1:{receiver.port}/hook")
        if receiver is not None and args.webhook_batch > 1:
            config = config.replace('secret = "whsec_bench_secret"\n',
                                    'secret = "whsec_bench_secret"\n'
                                    f"  batch = {args.webhook_batch}\n")
        if args.store == "redis":
            config = config.replace('url = "sqlite:///./var/calltrackd.db"',
                                    f'url = "{start_redis(procs, rundir)}"')
        daemon = Daemon(procs, rundir / "daemon", config, sip_port=sip_port,
                        http_port=http_port, python=args.python)
        daemon.start()
        uas = start_uas(procs, rundir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        # the callers: one visitor session per pool number but a share left to new visitors
        n = max(1, min(args.pool - args.pool // 5, calls))
        sessions = asyncio.run(reserve_sessions(daemon.base, n))
        inf = rundir / "numbers.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(f"{num}\n" for _, num in sessions))
        ctx = multiprocessing.get_context("spawn")
        probe_proc = ctx.Process(target=probe, args=(sip_port, probe_file, probe_stop),
                                 daemon=True)
        probe_proc.start()
        others = [os.getpid(), uas.pid]  # not redis-server: the store, not load
        if probe_proc.pid is not None:
            others.append(probe_proc.pid)
        time.sleep(2.0)
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=sampler, args=(daemon, t0, args.sample, stop, samples,
                                                     others),
                             name="sampler", daemon=True),
            threading.Thread(target=lambda: asyncio.run(renew_paced(
                daemon.base, sessions, args.rate, calls, 0.2, stop, renew)),
                name="renew", daemon=True),
            threading.Thread(target=lambda: asyncio.run(new_visitors(
                daemon.base, args.visitors, stop, visitors)), name="visitors", daemon=True),
        ]
        for t in threads:
            t.start()
        uac = procs.start(
            [SIPP, "-sf", str(UAC_INF_SCENARIO), "-inf", str(inf), "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(args.rate), "-m", str(calls),
             "-d", str(args.hold), "-nostdin", "-recv_timeout", "30000",
             "-timeout", f"{seconds + 120}s", "-max_socket", "2000", "-trace_stat",
             "-stf", "uac_stat.csv", "-fd", "10", "-trace_err", f"127.0.0.1:{sip_port}"],
            cwd=rundir, out=rundir / "uac.out")
        others.append(uac.pid)
        wait_rusage(uac, seconds + 180)
        procs.procs.remove(uac)
        loaded_for = time.monotonic() - t0
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        # the webhook queue drains: wait for it, bounded
        deadline = time.monotonic() + 60
        while receiver is not None and time.monotonic() < deadline and daemon.alive():
            if daemon.metrics().get("calltrackd_webhook_queue", 0.0) == 0.0:
                break
            time.sleep(1.0)
        end_text = daemon.metrics_text() if daemon.alive() else ""
        cdrs = all_calls(daemon, limit_pages=1000) if daemon.alive() else []
        problems = {k: v for k, v in daemon.log_problems().items() if not k.startswith("info")}
        alive = daemon.alive()
        daemon.stop()
    finally:
        stop.set()
        probe_stop.set()
        if probe_proc is not None:
            probe_proc.join(5)
            if probe_proc.is_alive():
                probe_proc.kill()
        procs.stop_all()
        if receiver is not None:
            receiver.stop()

    report(args, samples, t0, probe_windows(probe_file),
           read_stat_csv(rundir / "uac_stat.csv"), end_text, cdrs, renew, visitors, receiver,
           loaded_for, problems)
    log(f"load average at the end: {loadavg()}")
    log(f"command: {command}")
    if not alive:
        log("FAIL: calltrackd died")
        return 1
    return 0


def mmss(t: float) -> str:
    return f"{int(t // 60)}:{int(t % 60):02d}"


def report(args: argparse.Namespace, samples: list[Sample], t0: float,
           probes: list[tuple[float, float, int]], st: dict[str, str], end_text: str,
           cdrs: list[dict[str, object]], renew: RenewStats, visitors: VisitorStats,
           receiver: Receiver | None, loaded_for: float, problems: dict[str, int]) -> None:
    if len(samples) < 2:
        log("! too few samples")
        return
    end = parse_metrics(end_text)
    gc_runs = dict(re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$',
                              end_text, re.M))
    probes = [(at - t0, rtt, lost) for at, rtt, lost in probes if at >= t0]
    rows = []
    for a, b in itertools.pairwise(samples):
        span = b.t - a.t
        window = [p for p in probes if a.t <= p[0] < b.t]
        longest = max((p[1] for p in window), default=float("nan"))
        m = b.metrics
        rows.append([
            mmss(b.t), f"{m.get('calltrackd_active_calls', 0):.0f}",
            f"{b.rss_kb / 1024:.1f}",
            f"{(b.user - a.user) / span * 100:.0f}", f"{(b.system - a.system) / span * 100:.0f}",
            f"{(b.main - a.main) / span * 100:.0f}",
            f"{(b.waited - a.waited) / span * 100:.0f}",
            f"{(b.others - a.others) / span * 100:.0f}",
            f"{m.get('calltrackd_loop_lag_seconds', 0) * 1000:.1f}",
            f"{m.get('calltrackd_sip_queue_delay_seconds', 0) * 1000:.1f}", f"{longest:.0f}",
            f"{m.get('calltrackd_webhook_queue', 0):.0f}",
            f"{m.get('calltrackd_shed_calls_total', 0):.0f}",
        ])
    log(f"\nover time (every {args.sample:g} s; CPU in % of one core over the interval)")
    log(table(["m:ss", "calls up", "RSS MB", "user %", "sys %", "main thread %",
               "main thread waiting for a core %", "load generators' CPU %",
               "loop lag ms (smoothed)", "SIP queue delay ms", "longest OPTIONS answer ms",
               "webhook queue", "shed (total)"], rows))

    first, last = samples[0], samples[-1]
    span = last.t - first.t
    user, system = last.user - first.user, last.system - first.system
    main = last.main - first.main
    peak = max(samples, key=lambda s: s.rss_kb)
    loaded = [p for p in probes if first.t <= p[0] <= last.t]  # not the drain, the CDR fetch
    worst = max(loaded, key=lambda p: p[1], default=None)
    lost = sum(p[2] for p in loaded)
    placed, ok = stat_int(st, "OutgoingCall(C)"), stat_int(st, "SuccessfulCall(C)")
    failed = stat_int(st, "FailedCall(C)")
    causes = failure_causes(st)
    kinds: dict[str, int] = {}
    for c in cdrs:
        att = c.get("attribution")
        kind = str(att.get("kind", "none")) if isinstance(att, dict) else "none"
        kinds[kind] = kinds.get(kind, 0) + 1
    delivered = len({e for _, e in receiver.arrivals}) if receiver is not None else 0
    arrivals = len(receiver.arrivals) if receiver is not None else 0
    lag_max = max(s.metrics.get("calltrackd_loop_lag_seconds", 0.0) for s in samples)
    log("")
    log(table(["figure", "value"], [
        ["load", f"{args.rate} calls/s of {args.hold} ms, {args.visitors:g} new visitors/s, "
                 f"{loaded_for:.0f} s, {args.store}"],
        ["RSS start / end / peak", f"{first.rss_kb / 1024:.1f} / {last.rss_kb / 1024:.1f} / "
                                   f"{peak.rss_kb / 1024:.1f} MB (peak at {mmss(peak.t)})"],
        ["longest stall (OPTIONS answer)",
         f"{worst[1]:.0f} ms at {mmss(worst[0])}, {lost} probes "
         f"unanswered in {PROBE_TIMEOUT:g} s" if worst else "-"],
        ["loop lag, highest sample (smoothed)", f"{lag_max * 1000:.1f} ms"],
        ["daemon CPU", f"{(user + system) / span * 100:.0f}% of a core: user "
                       f"{user / span * 100:.0f}%, system {system / span * 100:.0f}%; "
                       f"main thread {main / span * 100:.0f}%, other threads "
                       f"{(user + system - main) / span * 100:.0f}%"],
        ["main thread waiting for a core",
         f"{(last.waited - first.waited) / span * 100:.0f}% of the time (runnable, not "
         "running: the machine's other work, the load generators included)"],
        ["load generators' CPU", f"{(last.others - first.others) / span * 100:.0f}% of a "
                                 "core (SIPp carrier and PBX, this process, the OPTIONS probe)"],
        ["CPU per 1,000 calls", f"{(user + system) / max(ok, 1) * 1000:.2f} s"],
        ["calls", f"placed {placed}, completed {ok}, failed {failed}"
                  + (f" ({causes})" if causes else "")
                  + f"; shed by the daemon {end.get('calltrackd_shed_calls_total', 0):.0f}"],
        ["CDRs", f"{len(cdrs)}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))],
        ["API", f"renewals {renew.ok}/{renew.sent} ok; new visitors {visitors.sent}: "
                f"{visitors.dynamic} dynamic, {visitors.other} default, {visitors.errors} "
                "errors"],
        ["webhooks", f"{delivered} events delivered ({arrivals - delivered} duplicates), "
                     f"queue at the end {end.get('calltrackd_webhook_queue', 0):.0f}"
                     if receiver is not None else "none"],
        ["daemon log, warnings and errors", "; ".join(
            f"{k} {v}" for k, v in sorted(problems.items(), key=lambda kv: -kv[1])) or "none"],
        ["GC collections (generation 0 / 1 / 2)",
         " / ".join(f"{float(gc_runs.get(str(g), 'nan')):.0f}" for g in range(3))],
    ]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
