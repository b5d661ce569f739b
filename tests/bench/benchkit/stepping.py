"""Stepping a system through its call rates, one step at a time."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from .common import CALLER, SIPP, log
from .procs import Procs, free_port, loadavg, tail, tree_cpu, wait_rusage, wait_udp_bound
from .record import STEP_HEAD, WIDTHS, Step, lat_triple, print_row, step_row
from .sipp import failure_causes, read_rtt, read_stat_csv, start_uas, stat_int
from .systems import CalltrackdSystem, System


def run_step(procs: Procs, system: System, rate: int, seconds: int, stepdir: Path,
             uac_port: int) -> Step:
    stepdir.mkdir(parents=True, exist_ok=True)
    step = Step(system=system.name, rate=rate, seconds=seconds)
    dial = system.before_step(rate, seconds, stepdir)
    uas = start_uas(procs, stepdir, system.pbx_port)
    try:
        wait_udp_bound(system.pbx_port, uas)
        calls = rate * seconds
        args = [SIPP, *dial, "-i", "127.0.0.1", "-p", str(uac_port),
                "-r", str(rate), "-m", str(calls), "-l", str(min(15000, max(100, rate * 12))),
                "-d", "1000", "-key", "caller", CALLER, "-nostdin",
                "-recv_timeout", "20000", "-timeout", f"{seconds + 60}s",
                "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-stf", "uac_stat.csv",
                "-fd", "1", "-trace_err", f"127.0.0.1:{system.sip_port}"]
        root = system.root_pid()
        cpu0 = tree_cpu(root)
        self_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        with system.during_step(rate, seconds, step):
            uac = procs.start(args, cwd=stepdir, out=stepdir / "uac.out")
            rc, uac_cpu = wait_rusage(uac, seconds + 90)
        step.wall = time.monotonic() - t0
        cpu1 = tree_cpu(root) if system.alive() else cpu0
        self_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        procs.procs.remove(uac)
        step.proxy_cpu = (cpu1 - cpu0) / step.wall * 100
        step.uac_cpu = uac_cpu / step.wall * 100
        step.client_cpu = ((self_cpu1.ru_utime + self_cpu1.ru_stime - self_cpu0.ru_utime
                            - self_cpu0.ru_stime) / step.wall * 100)
        if rc not in (0, 1):
            step.notes.append(f"sipp exit {rc}")
            if not (stepdir / "uac_stat.csv").exists():
                step.notes.append(tail(stepdir / "uac.out", 3).replace("\n", " | "))
    finally:
        time.sleep(0.5)  # the UAS sees the last BYEs
        with contextlib.suppress(ProcessLookupError):
            os.killpg(uas.pid, signal.SIGTERM)
        _, uas_cpu = wait_rusage(uas, 10)
        procs.procs.remove(uas)
    step.uas_cpu = uas_cpu / step.wall * 100 if step.wall else None
    st = read_stat_csv(stepdir / "uac_stat.csv")
    step.calls = stat_int(st, "OutgoingCall(C)")
    step.ok = stat_int(st, "SuccessfulCall(C)")
    step.failed = stat_int(st, "FailedCall(C)") + max(0, rate * seconds - step.calls)
    step.causes = failure_causes(st)
    step.retrans_uac = stat_int(st, "Retransmissions(C)")
    step.retrans_uas = stat_int(read_stat_csv(stepdir / "uas_stat.csv"), "Retransmissions(C)")
    rtt = read_rtt(stepdir)
    step.lat100 = lat_triple(rtt.get(1, []))
    step.lat180 = lat_triple(rtt.get(2, []))
    step.lat200 = lat_triple(rtt.get(3, []))
    step.lat100_max = max(rtt.get(1, [0.0]) or [0.0])
    if step.client_cpu is not None and step.client_cpu >= 5:
        step.notes.append(f"bench client CPU {step.client_cpu:.0f}%")
    if not system.alive():
        step.notes.append(f"{system.name} is not running")
        step.failed = max(step.failed, 1)
    else:
        system.after_step(step)
    if step.uac_cpu is not None and step.uac_cpu > 90:
        step.notes.append("SIPp UAC near 100% CPU: the load generator may be the limit")
    return step


def step_system(procs: Procs, system: System, rates: Sequence[int], seconds: int,
                stop_after: int, settle: float, rundir: Path,
                extra_rates: Sequence[int] = ()) -> list[Step]:
    load = loadavg()
    uac_port = free_port()
    steps: list[Step] = []
    version = ""
    system.start()
    try:
        version = system.version()
        log(f"\n=== {system.name} {version}   load average at start: {load}")
        print_row(STEP_HEAD, WIDTHS)
        failing = 0
        for rate in rates:
            if failing >= stop_after:
                break
            step = run_step(procs, system, rate, seconds, rundir / system.name / f"r{rate}",
                            uac_port)
            steps.append(step)
            print_row(step_row(step), WIDTHS)
            failing = 0 if step.clean else failing + 1
            if not system.alive():
                log(f"  ! {system.name} is not running; stopping here")
                return steps
            time.sleep(settle)
        for rate in extra_rates:
            if rate in {s.rate for s in steps}:
                continue
            log(f"  (one more step at {rate}/s for the latency figure)")
            step = run_step(procs, system, rate, seconds, rundir / system.name / f"r{rate}",
                            uac_port)
            steps.append(step)
            print_row(step_row(step), WIDTHS)
    finally:
        system.stop()
        if isinstance(system, CalltrackdSystem) and version and system.version() != version:
            log(f"  ! the code changed during these steps: now {system.version()}")
    problems = system.problems()
    if problems:
        log(f"  daemon log: {problems}")
    return steps
