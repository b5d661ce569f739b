"""A stranger's flood against carrier calls: what it costs the calls, what it gets back.

    .venv/bin/python tests/bench/flood.py [--cps 50] [--seconds 20] \\
        [--rates 0,1000,10000,max] [--policy drop|reject]

For each flood rate (INVITEs/s from 127.0.0.2, each with its own Call-ID; `max`: as fast
as one Python sender loop goes, 0: no flood, the baseline) a fresh calltrackd (the
embedded store, tracking a static number) takes --cps calls/s for --seconds from a SIPp
carrier on 127.0.0.1 (its only carrier address), forwarded to a SIPp PBX on 127.0.0.3
that answers and hangs up after 200 ms (tests/integration/test_strangers.py's set-up).
Printed per rate: the flood rate reached, carrier calls answered, shed (503 + Retry-After:
the overload protection, which a busy machine triggers without any flood) and failed
(anything else), packets
sent back to the stranger and per packet it sent, what the daemon counted
(calltrackd_sip_stranger_packets_total), and the daemon's CPU time per second.
Exit status 1 when a carrier call failed. Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.flooding import Flood  # noqa: E402
from tests.integration.conftest import Sipp, free_port, start_daemon  # noqa: E402
from tests.integration.test_strangers import (  # noqa: E402
    DID,
    PBX_HOST,
    config,
    shed_and_answered,
    stranger_counts,
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def step(rate: float | None, cps: int, seconds: int, policy: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp_s:
        tmp = Path(tmp_s)
        sip, http, pbx = free_port(), free_port(), free_port()
        daemon = start_daemon(tmp, config(sip, http, pbx, policy=policy), sip, http)
        calls = cps * seconds
        try:
            flood = Flood(sip, DID, rate=rate, seconds=seconds + 5) if rate != 0 else None
            cpu0, t0 = cpu_seconds(daemon.proc.pid), time.monotonic()
            if flood is not None:
                flood.start()
            uas = Sipp(tmp, "pbx", "uas_bye.xml", pbx, "-i", PBX_HOST, "-d", "200", "-m",
                       str(calls), "-timeout", "120s")
            uac = Sipp(tmp, "carrier", "uac_callee_bye_or_503.xml", free_port(), "-s", DID, "-r",
                       str(cps), "-m", str(calls), "-timeout", "120s", "-timeout_error",
                       remote=f"127.0.0.1:{sip}")
            res = uac.wait(seconds + 130)
            cpu = (cpu_seconds(daemon.proc.pid) - cpu0) / (time.monotonic() - t0)
            uas.kill()
            if flood is not None:
                flood.close(linger=3.0)
            counts = stranger_counts(daemon)
            time.sleep(1.0)  # the last call records
            shed, answered = shed_and_answered(daemon)
        finally:
            daemon.stop()
        failed = int(res.stats.get("FailedCall(C)", "-1"))
        label = "none" if rate == 0 else ("max" if rate is None else f"{rate:,.0f}/s")
        if flood is None:
            print(f"flood {label:>9}: carrier {answered}/{calls} answered, {shed} shed, "
                  f"{failed} failed; daemon CPU {cpu:.0%}")
        else:
            ratio = flood.received / flood.sent if flood.sent else 0.0
            print(f"flood {label:>9}: sent {flood.sent:,} at {flood.sent_rate:,.0f}/s; "
                  f"carrier {answered}/{calls} answered, {shed} shed, {failed} failed; back "
                  f"to the stranger "
                  f"{flood.received:,} ({ratio:.4f} per packet in, {dict(flood.statuses)}); "
                  f"daemon counted {({k: int(v) for k, v in counts.items()})}; "
                  f"daemon CPU {cpu:.0%}")
        return failed == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cps", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rates", default="0,1000,10000,max")
    ap.add_argument("--policy", choices=("drop", "reject"), default="drop")
    args = ap.parse_args()
    import calltrackd.sip

    print(f"command: {' '.join(sys.argv)}")
    print(f"SIP core: {calltrackd.sip.NATIVE}; stranger_policy = {args.policy}; "
          f"{args.cps} carrier calls/s for {args.seconds} s")
    clean = True
    for raw in args.rates.split(","):
        rate = None if raw == "max" else float(raw)
        clean = step(rate, args.cps, args.seconds, args.policy) and clean
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
