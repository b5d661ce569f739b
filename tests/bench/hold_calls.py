"""Memory per concurrent call: calltrackd holding 10,000 calls up at once.

    .venv/bin/python tests/bench/hold_calls.py [--calls 10000] [--rate 500] [--hold 60]

Starts calltrackd (routing only: every call dials a static number; `[sip] max_calls = 0`,
the embedded store) and a SIPp PBX (tests/bench/scenarios/uas_answer_rr.xml), then one
SIPp caller that places --calls calls at --rate calls/s, each lasting
(--hold + calls / rate) s, so that all of them are up together for --hold seconds. The
daemon's resident memory (VmRSS) and its `calltrackd_active_calls` gauge are sampled every
second. It prints the RSS before the calls, on the plateau (all calls up) and after they
ended, and the KB per call: (plateau RSS - RSS before) / calls up. Also the daemon's CPU
while it only holds the calls (timers, nothing else). Helpers come from compare.py next
to it. Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

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
    rss_kb,
    start_uas,
    stat_int,
    table,
    tree_cpu,
    wait_rusage,
    wait_udp_bound,
)


@dataclass
class Sample:
    t: float
    active: float
    rss: int
    cpu: float


def sampler(daemon: Daemon, t0: float, stop: threading.Event, out: list[Sample]) -> None:
    while not stop.is_set():
        m = daemon.metrics()
        if daemon.alive():
            out.append(Sample(time.monotonic() - t0, m.get("calltrackd_active_calls", -1.0),
                              rss_kb(daemon.pid), tree_cpu(daemon.pid)))
        stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=10000, help="calls held at once (10000)")
    ap.add_argument("--rate", type=int, default=500, help="calls/s while ramping up (500)")
    ap.add_argument("--hold", type=int, default=60,
                    help="seconds during which all calls are up together (60)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    args = ap.parse_args(argv)
    install_signal_handlers()
    ramp = args.calls / args.rate
    duration = args.hold + ramp
    rundir = args.scratch / time.strftime("hold-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd concurrent calls: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"kernel {info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    log(f"{args.calls} calls at {args.rate}/s, each {duration:.0f} s long: all up together "
        f"from {ramp:.0f} s to {duration:.0f} s")

    procs = Procs()
    samples: list[Sample] = []
    stop = threading.Event()
    sip_port, http_port, pbx_port, uac_port = free_port(), free_port(), free_port(), free_port()
    try:
        daemon = Daemon(procs, rundir / "daemon",
                        daemon_toml(sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
                                    pool=pool_numbers(10), max_calls=0),
                        sip_port=sip_port, http_port=http_port, python=args.python)
        daemon.start()
        uas = start_uas(procs, rundir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        time.sleep(2.0)
        rss_before = rss_kb(daemon.pid)
        t0 = time.monotonic()
        thread = threading.Thread(target=sampler, args=(daemon, t0, stop, samples),
                                  daemon=True)
        thread.start()
        uac = procs.start(
            [SIPP, "-sf", str(UAC_SCENARIO), "-s", STATIC_NUMBER, "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(args.rate),
             "-m", str(args.calls), "-l", str(args.calls), "-d", str(int(duration * 1000)),
             "-nostdin", "-recv_timeout", "60000", "-timeout", f"{duration + 120:.0f}s",
             "-max_socket", str(args.calls + 100), "-trace_stat", "-stf", "uac_stat.csv",
             "-fd", "1", "-trace_err", f"127.0.0.1:{sip_port}"],
            cwd=rundir, out=rundir / "uac.out")
        _, uac_cpu = wait_rusage(uac, duration + 180)
        procs.procs.remove(uac)
        time.sleep(5.0)
        stop.set()
        thread.join(10)
        rss_after = rss_kb(daemon.pid) if daemon.alive() else 0
        alive = daemon.alive()
        daemon.stop()
    finally:
        stop.set()
        procs.stop_all()

    st = read_stat_csv(rundir / "uac_stat.csv")
    placed = stat_int(st, "OutgoingCall(C)")
    ok = stat_int(st, "SuccessfulCall(C)")
    failed = stat_int(st, "FailedCall(C)")
    causes = failure_causes(st)
    rows = []
    mark = 0.0
    for s in samples:
        if s.t >= mark or s is samples[-1]:
            rows.append([f"{s.t:.0f}", f"{s.active:.0f}", f"{s.rss / 1024:.1f}"])
            mark = (s.t // 10 + 1) * 10
    log("\ntimeline (every 10 s)")
    log(table(["t s", "calls up", "RSS MB"], rows))

    # the plateau: samples with (nearly) every call up
    peak_calls = max((s.active for s in samples), default=0.0)
    plateau = [s for s in samples if s.active >= 0.99 * args.calls]
    log(f"\ncalls placed {placed}, completed {ok}, failed {failed}"
        + (f" ({causes})" if causes else "") + f"; most calls up at once {peak_calls:.0f}")
    if not plateau:
        log(f"! the daemon never held {args.calls} calls at once (peak {peak_calls:.0f})")
        plateau = [s for s in samples if s.active >= 0.99 * peak_calls] if peak_calls else []
    if plateau:
        rss_plateau = statistics.median(s.rss for s in plateau)
        held = statistics.median(s.active for s in plateau)
        span = plateau[-1].t - plateau[0].t
        cpu = ((plateau[-1].cpu - plateau[0].cpu) / span * 100) if span > 0 else 0.0
        per_call = (rss_plateau - rss_before) / held if held else 0.0
        log(f"RSS before the calls {rss_before / 1024:.1f} MB; with {held:.0f} calls up "
            f"{rss_plateau / 1024:.1f} MB (median of {len(plateau)} samples over "
            f"{span:.0f} s); peak {max(s.rss for s in samples) / 1024:.1f} MB; after the calls "
            f"ended {rss_after / 1024:.1f} MB")
        log(f"memory per concurrent call: {per_call:.1f} KB")
        log(f"daemon CPU while holding the calls: {cpu:.1f}% of a core; SIPp UAC CPU over the "
            f"run {uac_cpu / duration * 100:.0f}%")
    log(f"load average at the end: {loadavg()}")
    if not alive:
        log("FAIL: calltrackd died")
        return 1
    return 0 if failed == 0 and plateau else 1


if __name__ == "__main__":
    sys.exit(main())
