"""Overload is shed, not queued: calltrackd offered twice its sustainable rate.

    .venv/bin/python tests/bench/overload.py [--sustainable 400] [--factor 2] \\
        [--seconds 30] [--recovery-seconds 30]

Starts calltrackd (routing only, a static number, the embedded store) and a SIPp PBX,
then offers --factor x --sustainable calls/s for --seconds with
tests/bench/scenarios/uac_overload.xml (tests/scenarios/uac_call_or_503.xml plus a check
that every 503 carries Retry-After, and response timers), and from the moment that load
stops being offered, --sustainable calls/s for --recovery-seconds (a second SIPp).
Calls last 1 s; the PBX answers after 200 ms. The daemon's /metrics are sampled every
0.5 s for the timeline (shed INVITEs, calls in progress).

It prints the three figures:
  1. overload: INVITEs offered, answered 503 with Retry-After (SIPp's count of 503s; a 503
     without Retry-After fails the call), accepted (100/180/200);
  2. of the accepted calls, how many completed and how many failed (must be 0 failed);
  3. recovery at the sustainable rate: calls completed / failed / shed, and how long after
     the load dropped the last INVITE was shed.
Exit status 1 when an accepted call failed (in either phase), 2 when nothing was shed
(the node was not overloaded: raise --sustainable), else 0. Helpers come from compare.py
next to it. Not part of the test run.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

from tests.bench.compare import (
    CALLER,
    SCENARIOS,
    SIPP,
    STATIC_NUMBER,
    Daemon,
    Procs,
    code_version,
    daemon_toml,
    failure_causes,
    fmt_ms,
    free_port,
    install_signal_handlers,
    loadavg,
    log,
    machine,
    pct,
    pool_numbers,
    read_rtt,
    read_stat_csv,
    start_uas,
    stat_int,
    table,
    tail,
    tree_cpu,
    wait_rusage,
    wait_udp_bound,
)

SCENARIO = SCENARIOS / "uac_overload.xml"


def read_counts(directory: Path) -> dict[str, int]:
    """SIPp -trace_counts: the last line, by column (e.g. '3_503_Recv')."""
    files = sorted(directory.glob("*_counts.csv"))
    if not files:
        return {}
    lines = [ln for ln in files[-1].read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    out: dict[str, int] = {}
    for k, v in zip(head, last, strict=False):
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def count(counts: dict[str, int], index: int, what: str) -> int:
    """Messages of scenario line `index` (0-based as SIPp numbers them), e.g. (1, '100_Recv')."""
    return counts.get(f"{index}_{what}", 0)


@dataclass
class Phase:
    name: str
    rate: int
    seconds: int
    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    rc: int | None = None
    cpu: float = 0.0
    started: float = 0.0
    stats: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def start(self, procs: Procs, target: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.proc = procs.start(
            [SIPP, "-sf", str(SCENARIO), "-s", STATIC_NUMBER, "-key", "caller", CALLER,
             "-i", "127.0.0.1", "-p", str(self.port), "-r", str(self.rate),
             "-m", str(self.rate * self.seconds), "-l", str(min(self.rate * 20, 15000)),
             "-d", "1000",
             "-nostdin", "-recv_timeout", "40000", "-timeout", f"{self.seconds + 90}s",
             "-trace_stat", "-stf", "stat.csv", "-fd", "1", "-trace_counts", "-trace_err",
             "-trace_rtt", "-rtt_freq", "1", f"127.0.0.1:{target}"],
            cwd=self.directory, out=self.directory / "sipp.out")

    def wait(self, procs: Procs) -> None:
        assert self.proc is not None
        self.rc, self.cpu = wait_rusage(self.proc, self.seconds + 120)
        procs.procs.remove(self.proc)
        self.stats = read_stat_csv(self.directory / "stat.csv")
        self.counts = read_counts(self.directory)

    # scenario lines: 0 INVITE, 1 100, 2 503, 3 180, 4 183, 5 200, 6 ACK, 7 pause, 8 BYE,
    # 9 200 (to the BYE), 10 nop, 11 ACK of the 503 (labels are not counted)
    @property
    def offered(self) -> int:
        return stat_int(self.stats, "OutgoingCall(C)")

    @property
    def shed(self) -> int:
        return count(self.counts, 2, "503_Recv")

    @property
    def answered(self) -> int:
        return count(self.counts, 5, "200_Recv")

    @property
    def completed(self) -> int:
        return count(self.counts, 9, "200_Recv")

    @property
    def failed(self) -> int:
        return stat_int(self.stats, "FailedCall(C)")


@dataclass
class Sample:
    t: float
    shed: float
    active: float
    cpu: float


def sampler(daemon: Daemon, t0: float, stop: threading.Event, out: list[Sample]) -> None:
    while not stop.is_set():
        m = daemon.metrics()
        cpu = tree_cpu(daemon.pid) if daemon.alive() else 0.0
        if m:
            out.append(Sample(time.monotonic() - t0, m.get("calltrackd_overload_rejected_total",
                                                           0.0),
                              m.get("calltrackd_active_calls", 0.0), cpu))
        stop.wait(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sustainable", type=int, default=400,
                    help="the rate calltrackd sustains with 0 failed calls (400)")
    ap.add_argument("--factor", type=float, default=2.0, help="overload = factor x sustainable")
    ap.add_argument("--seconds", type=int, default=30, help="overload phase, s (30)")
    ap.add_argument("--recovery-seconds", type=int, default=30,
                    help="phase at the sustainable rate, s (30)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"))
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    args = ap.parse_args(argv)
    install_signal_handlers()
    over_rate = int(args.sustainable * args.factor)
    rundir = args.scratch / time.strftime("overload-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd overload: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['os']}, kernel "
        f"{info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    log(f"offered {over_rate} calls/s for {args.seconds} s, then {args.sustainable} calls/s "
        f"for {args.recovery_seconds} s; calls of 1 s, PBX answers after 200 ms")

    procs = Procs()
    samples: list[Sample] = []
    stop = threading.Event()
    sip_port, http_port, pbx_port = free_port(), free_port(), free_port()
    over = Phase("overload", over_rate, args.seconds, rundir / "overload", free_port())
    rec = Phase("recovery", args.sustainable, args.recovery_seconds, rundir / "recovery",
                free_port())
    try:
        daemon = Daemon(procs, rundir / "daemon",
                        daemon_toml(sip_port=sip_port, http_port=http_port, pbx_port=pbx_port,
                                    pool=pool_numbers(10)),
                        sip_port=sip_port, http_port=http_port, python=args.python)
        daemon.start()
        uas = start_uas(procs, rundir, pbx_port)
        wait_udp_bound(pbx_port, uas)
        t0 = time.monotonic()
        thread = threading.Thread(target=sampler, args=(daemon, t0, stop, samples),
                                  daemon=True)
        thread.start()
        over.start(procs, sip_port)
        # SIPp creates its last call at about `seconds`: the lower rate starts right then
        time.sleep(max(0.0, over.started + args.seconds - time.monotonic()))
        rec.start(procs, sip_port)
        drop_at = rec.started - t0
        over.wait(procs)
        rec.wait(procs)
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        alive = daemon.alive()
        problems = daemon.log_problems()
        daemon.stop()
    finally:
        stop.set()
        procs.stop_all()

    for ph in (over, rec):
        if not ph.stats:
            log(f"! no SIPp statistics for the {ph.name} phase:\n" + tail(ph.directory
                                                                          / "sipp.out"))
            return 1

    # timeline in 5 s buckets from the daemon's counters
    rows = []
    prev: Sample | None = None
    bucket_end = 5.0
    first: Sample | None = samples[0] if samples else None
    for s in samples:
        if s.t >= bucket_end or s is samples[-1]:
            base = prev or first
            if base is not None and s is not base:
                dt = s.t - base.t
                rows.append([f"{base.t:5.1f}-{s.t:5.1f}",
                             "overload" if s.t <= drop_at + 0.25 else "recovery",
                             f"{(s.shed - base.shed) / dt:.0f}", f"{s.active:.0f}",
                             f"{(s.cpu - base.cpu) / dt * 100:.0f}%"])
            prev = s
            bucket_end += 5.0
    last_shed_t = None
    for a, b in itertools.pairwise(samples):
        if b.shed > a.shed:
            last_shed_t = b.t
    log("\ntimeline (daemon /metrics; the load dropped at "
        f"{drop_at:.1f} s)")
    log(table(["t s", "phase", "shed/s", "calls up", "daemon CPU"], rows))

    o_rtt = read_rtt(over.directory).get(1, [])
    r_rtt = read_rtt(rec.directory).get(1, [])
    accepted = over.offered - over.shed
    log(f"\n1. overload: {over.rate} calls/s for {over.seconds} s")
    log(f"   INVITEs offered {over.offered}; answered 503 with Retry-After {over.shed} "
        f"({over.shed / max(1, over.offered):.0%}); accepted {accepted} "
        f"({accepted / args.seconds:.0f} calls/s)")
    log(f"   time to the first answer (100 or 503): p50 {fmt_ms(pct(o_rtt, 0.5))} ms, p99 "
        f"{fmt_ms(pct(o_rtt, 0.99))} ms; UAC retransmissions "
        f"{stat_int(over.stats, 'Retransmissions(C)')}")
    causes = failure_causes(over.stats)
    log(f"2. of the {accepted} accepted calls: completed {over.completed}, failed {over.failed}"
        + (f" ({causes})" if causes else ""))
    shed_after = None if last_shed_t is None else max(0.0, last_shed_t - drop_at)
    causes = failure_causes(rec.stats)
    log(f"3. recovery: {rec.rate} calls/s for {rec.seconds} s: offered {rec.offered}, "
        f"completed {rec.completed}, failed {rec.failed}"
        + (f" ({causes})" if causes else "")
        + f", shed {rec.shed}; INVITE->100 p99 {fmt_ms(pct(r_rtt, 0.99))} ms")
    if rec.shed:
        log(f"   last INVITE shed {shed_after or 0.0:.1f} s after the load dropped")
    else:
        log("   no INVITE shed at the sustainable rate")
    bad = {k: v for k, v in problems.items() if not k.startswith("info")}
    if bad:
        log("daemon log: " + "; ".join(f"{k} x{v}" for k, v in sorted(bad.items(),
                                                                   key=lambda kv: -kv[1])[:8]))
    log(f"SIPp CPU: overload UAC {over.cpu / max(1.0, over.seconds) * 100:.0f}%, "
        f"recovery UAC {rec.cpu / max(1.0, rec.seconds) * 100:.0f}% of a core")
    log(f"load average at the end: {loadavg()}")
    if not alive:
        log("FAIL: calltrackd died")
        return 1
    if over.failed or rec.failed:
        log("FAIL: calls that calltrackd accepted failed")
        return 1
    if not over.shed:
        log("INCONCLUSIVE: nothing was shed, the node was not overloaded (raise --sustainable)")
        return 2
    log("PASS: the excess was answered 503 + Retry-After, every accepted call completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
