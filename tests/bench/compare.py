"""calltrackd against Sippy B2BUA and Kamailio: the highest clean call rate of each, on
this machine, in one run.

    .venv/bin/python tests/bench/compare.py                 # all four systems, 30 s steps
    .venv/bin/python tests/bench/compare.py --step-seconds 5 --only calltrackd \\
        --rates 100,200                                           # a quick look
    .venv/bin/python tests/bench/compare.py --help

For every system it starts the proxy under test on 127.0.0.1, a SIPp UAS as the PBX
(tests/bench/scenarios/uas_answer_rr.xml: 180 at once, 200 after 200 ms, waits for the
BYE) and, for each offered rate, a SIPp UAC (tests/bench/scenarios/uac_rtt*.xml) for
--step-seconds with calls of 1 s over UDP. A system stops stepping at its first rate with
failed calls (--stop-after). The systems:

  calltrackd-tracking  calltrackd with tracking on: the tracker has a pool of --pool-size
                       numbers; before each step a fresh daemon is started and
                       min(pool, rate x seconds) visitor sessions are reserved with
                       POST /v1/sessions; SIPp dials those numbers in turn (-inf), and
                       during the step every call's session is renewed through the API
                       just before its call, at the call rate. Afterwards every CDR is
                       read back (GET /v1/calls) and must say attribution "dynamic".
  calltrackd           calltrackd routing only: every call dials a static number.
  sippy                Sippy B2BUA (pip install sippy, into a throwaway venv in --scratch):
                       b2bua_simple -f -l 127.0.0.1 -p PORT -n 127.0.0.1:PBXPORT
  kamailio             Kamailio as a stateful proxy (tests/bench/kamailio-proxy.cfg: tm,
                       record_route, t_relay), kamailio -DD -E -m 2048 -x tlsf; apt-get
                       installs it when /usr/sbin/kamailio is missing.

Per step it prints calls, failed calls, retransmissions (UAC / UAS), INVITE->100,
INVITE->180 and INVITE->200 latency (p50 / p99 from SIPp's -trace_rtt, which has 1 ms
resolution), the CPU of the proxy (all its processes and threads, % of one core), SIPp's
own CPU (so a SIPp bottleneck is visible) and, for calltrackd, the INVITEs it shed (503).
Then a summary per system (highest rate with 0 failed calls and the figures at that
rate), the ratios calltrackd / Sippy and calltrackd / Kamailio, and the p99 INVITE->100 of
calltrackd at 500 calls/s (--latency-at). Machine, versions and the load average at the
start of every system are printed too: figures taken while other work loads the machine
are noisy. Results also go to --scratch/run-*/results.json.

Every process it starts is in its own process group and is killed on exit, Ctrl-C or
error; every wait has a timeout. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

# the names other benchmarks import from compare
from tests.bench.benchkit.common import *  # noqa: F403
from tests.bench.benchkit.common import BENCH, ROOT, SYSTEMS, log
from tests.bench.benchkit.daemon import *  # noqa: F403
from tests.bench.benchkit.daemon import code_version
from tests.bench.benchkit.metrics import *  # noqa: F403
from tests.bench.benchkit.procs import *  # noqa: F403
from tests.bench.benchkit.procs import Procs, free_port, install_signal_handlers, loadavg
from tests.bench.benchkit.record import *  # noqa: F403
from tests.bench.benchkit.record import Step
from tests.bench.benchkit.sipp import *  # noqa: F403
from tests.bench.benchkit.stepping import *  # noqa: F403
from tests.bench.benchkit.stepping import step_system
from tests.bench.benchkit.summary import *  # noqa: F403
from tests.bench.benchkit.summary import machine, print_summary
from tests.bench.benchkit.systems import *  # noqa: F403
from tests.bench.benchkit.systems import CalltrackdSystem, KamailioSystem, SippySystem, System


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Step the offered call rate through calltrackd (tracking on / routing "
                    "only), Sippy B2BUA and Kamailio and compare their highest clean rates.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: compare.py --step-seconds 5 --only calltrackd --rates 100,200")
    ap.add_argument("--step-seconds", type=int, default=30, help="seconds per rate (30)")
    ap.add_argument("--only", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--rates", help="calls/s for every system (overrides the per-system lists)")
    ap.add_argument("--calltrackd-rates",
                    default="100,200,400,500,600,800,1000,1100,1200,1300,1400,1600")
    ap.add_argument("--sippy-rates", default="100,150,200,250,300,400")
    ap.add_argument("--kamailio-rates", default="1000,2000,3000,4000,5000,6000")
    ap.add_argument("--latency-at", type=int, default=500,
                    help="also measure calltrackd at this rate if its stepping stopped "
                         "below it (the p99 INVITE->100 figure; 0: off)")
    ap.add_argument("--stop-after", type=int, default=1,
                    help="stop a system after this many consecutive failing steps (1)")
    ap.add_argument("--settle", type=float, default=3.0, help="pause between steps, s (3)")
    ap.add_argument("--pool-size", type=int, default=5000,
                    help="pool numbers of the tracking variant (5000)")
    ap.add_argument("--kamailio-children", type=int, default=4,
                    help="Kamailio UDP worker processes (4)")
    ap.add_argument("--sippy-siplog", default="stderr", choices=["stderr", "none"],
                    help="Sippy's SIPLOG_BEND: stderr (its default: every message logged, "
                         "to a file here) or none")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/calltrackd-bench"),
                    help="scratch space: the Sippy venv and the run's logs (/tmp/calltrackd-bench)")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that has calltrackd installed (this one)")
    ap.add_argument("--summary-from", type=Path, metavar="RESULTS_JSON",
                    help="print the summary of an earlier run's results.json and exit")
    ap.add_argument("--all", action="store_true",
                    help="afterwards also run, with their defaults, hold_calls.py (memory per "
                         "concurrent call), bench_sessions.py (POST /v1/sessions), "
                         "bench_webhooks.py (deliveries/s) and overload.py (with "
                         "--sustainable = calltrackd's max clean CPS)")
    args = ap.parse_args(argv)
    if args.summary_from:
        saved = json.loads(args.summary_from.read_text())
        known = {f.name for f in fields(Step)}
        lats = ("lat100", "lat180", "lat200")

        def step(raw: dict[str, Any]) -> Step:
            values: dict[str, Any] = {k: tuple(v) if k in lats else v
                                      for k, v in raw.items() if k in known}
            return Step(**values)

        steps = {name: [step(raw) for raw in runs] for name, runs in saved["steps"].items()}
        print_summary(steps, saved.get("versions", {}), int(saved["args"]["step_seconds"]),
                      int(saved["args"].get("latency_at", "0")))
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    def rates(text: str) -> list[int]:
        return sorted({int(x) for x in (args.rates or text).split(",") if x.strip()})
    per_system = {"calltrackd-tracking": rates(args.calltrackd_rates),
                  "calltrackd": rates(args.calltrackd_rates),
                  "sippy": rates(args.sippy_rates), "kamailio": rates(args.kamailio_rates)}

    install_signal_handlers()
    rundir = args.scratch / time.strftime("run-%Y%m%d-%H%M%S")
    rundir.mkdir(parents=True, exist_ok=True)
    info = machine()
    log("calltrackd benchmark: " + " ".join(sys.argv))
    log(f"code: {code_version(args.python)}")
    log(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}, {info['os']}, "
        f"kernel {info['kernel']}, Python {info['python']}, SIPp {info['sipp']}")
    log(f"load average at start: {loadavg()}   logs: {rundir}")
    log(f"steps of {args.step_seconds} s, calls of 1 s (PBX answers after 200 ms), UDP on "
        "127.0.0.1; latency in ms (SIPp's clock has 1 ms steps); CPU in % of one core")

    procs = Procs()
    results: dict[str, list[Step]] = {}
    versions: dict[str, str] = {}
    try:
        for name in only:
            pbx_port = free_port()
            workdir = rundir / name
            system: System
            if name.startswith("calltrackd"):
                system = CalltrackdSystem(procs, workdir, pbx_port,
                                          tracking=name == "calltrackd-tracking",
                                          pool_size=args.pool_size, python=args.python)
                extra = [args.latency_at] if args.latency_at else []
            elif name == "sippy":
                system = SippySystem(procs, workdir, pbx_port, scratch=args.scratch,
                                     siplog=args.sippy_siplog)
                extra = []
            else:
                system = KamailioSystem(procs, workdir, pbx_port,
                                        children=args.kamailio_children)
                extra = []
            try:
                results[name] = step_system(procs, system, per_system[name], args.step_seconds,
                                            args.stop_after, args.settle, rundir, extra)
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                log(f"  ! {name} could not be measured: {exc}")
                results[name] = []
            versions[name] = system.version()
    finally:
        procs.stop_all()

    summaries = print_summary(results, versions, args.step_seconds, args.latency_at)
    log(f"load average at the end: {loadavg()}")
    rc = 0
    if args.all:
        sustainable = summaries["calltrackd"].max_clean if "calltrackd" in summaries else 0
        rc = run_extras(args, sustainable or 400)
    out = {"machine": info, "versions": versions, "args": {k: str(v) for k, v in
                                                           vars(args).items()},
           "steps": {k: [asdict(s) for s in v] for k, v in results.items()}}
    (rundir / "results.json").write_text(json.dumps(out, indent=1))
    log(f"results: {rundir / 'results.json'}")
    return rc


def run_extras(args: argparse.Namespace, sustainable: int) -> int:
    """The other benchmarks, one after the other, their output inline."""
    scratch = ["--scratch", str(args.scratch)]
    extras: list[tuple[list[str], float]] = [
        ([str(BENCH / "hold_calls.py"), *scratch], 900),
        ([str(BENCH / "bench_sessions.py")], 600),
        ([str(BENCH / "bench_webhooks.py"), *scratch], 1200),
        ([str(BENCH / "overload.py"), "--sustainable", str(sustainable), *scratch], 900),
    ]
    rc = 0
    for cmd, timeout in extras:
        log(f"\n=== {Path(cmd[0]).name} {' '.join(cmd[1:])}   load average: {loadavg()}   "
            f"{code_version(args.python)}")
        # its own process group: on a timeout or Ctrl-C the group gets SIGTERM (the bench
        # scripts then stop what they started; bench_sessions.py's daemon is in that
        # group), then SIGKILL after a minute
        p = subprocess.Popen([args.python, *cmd], cwd=ROOT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            code = p.wait(timeout)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            log(f"  ! timed out after {timeout:.0f} s")
            rc = 1
            continue
        if code:
            log(f"  ({Path(cmd[0]).name} exited {code})")
            rc = rc or code
    return rc


if __name__ == "__main__":
    sys.exit(main())
