"""The summary: the highest clean rate of each system, the ratios, the machine."""

from __future__ import annotations

import operator
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import log
from .record import MAX_RETRANS_SHARE, Step, table
from .sipp import fmt_ms, fmt_pct, sipp_version

# --- summary -------------------------------------------------------------------------




@dataclass
class Summary:
    system: str
    best: Step | None
    tried: list[int]
    no_retrans: int = 0  # the highest sustained rate that also had no retransmission
    zero_failed: int = 0  # the highest rate below the first with failed calls

    @property
    def max_clean(self) -> int:
        return self.best.rate if self.best else 0


def summarize(name: str, steps: Sequence[Step]) -> Summary:
    """The highest sustained rate below the first rate that was not (see Step.sustained)."""
    best: Step | None = None
    quiet = zero_failed = 0
    for s in sorted(steps, key=lambda s: s.rate):
        if not s.sustained:
            break
        best = s
        if s.retrans_uac == 0 and s.retrans_uas == 0:
            quiet = s.rate
    for s in sorted(steps, key=lambda s: s.rate):
        if not s.clean:
            break
        zero_failed = s.rate
    return Summary(name, best, [s.rate for s in steps], quiet, zero_failed)


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) // 1024} MB"
    return {"cpu": model, "cores": str(os.cpu_count()), "memory": mem,
            "kernel": platform.release(), "os": _os_release(),
            "python": platform.python_version(), "sipp": sipp_version()}


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def print_summary(results: dict[str, list[Step]], versions: dict[str, str], step_seconds: int,
                  latency_at: int) -> dict[str, Summary]:
    summaries = {name: summarize(name, steps) for name, steps in results.items()}
    head = ["system", "version", "max CPS", "100 p99", "180 p99", "retr uac/uas",
            "proxy CPU", "SIPp CPU uac/uas", "0 retr", "0 failed", "steps tried"]
    rows = []
    for name, sm in summaries.items():
        b = sm.best
        rows.append([name, versions.get(name, ""), str(sm.max_clean),
                     fmt_ms(b.lat100[1]) + " ms" if b and b.lat100[2] else "-",
                     fmt_ms(b.lat180[1]) + " ms" if b and b.lat180[2] else "-",
                     f"{b.retrans_uac}/{b.retrans_uas}" if b else "-",
                     fmt_pct(b.proxy_cpu) if b else "-",
                     f"{fmt_pct(b.uac_cpu)}/{fmt_pct(b.uas_cpu)}" if b else "-",
                     str(sm.no_retrans), str(sm.zero_failed), ",".join(map(str, sm.tried))])
    log("\n=== summary (max CPS: the highest rate, below the first that was not, with 0 "
        f"failed calls over {step_seconds} s and retransmissions <= "
        f"{MAX_RETRANS_SHARE:.0%} of the calls; figures at that rate. 0 retr: the same "
        "without any retransmission; 0 failed: counting failed calls only)")
    log(table(head, rows))
    # two readings of "clean": max CPS (0 failed, retransmissions <= 1%), and without any
    # retransmission (how the issue measured Kamailio: "2,000 CPS clean, 3,000 with 0
    # failures but some retransmissions")
    for title, rate in (("max CPS", operator.attrgetter("max_clean")),
                        ("the highest rate without any retransmission (0 retr)",
                         operator.attrgetter("no_retrans"))):
        ratios = []
        for ct in ("calltrackd-tracking", "calltrackd"):
            for ref in ("sippy", "kamailio"):
                if ct in summaries and ref in summaries and rate(summaries[ref]):
                    a, b = rate(summaries[ct]), rate(summaries[ref])
                    ratios.append(f"{ct} / {ref} = {a} / {b} = {a / b:.2f}")
        if ratios:
            log(f"\nratios of {title}:\n  " + "\n  ".join(ratios))
    if latency_at:
        for ct in ("calltrackd-tracking", "calltrackd"):
            at = [s for s in results.get(ct, []) if s.rate == latency_at]
            if at:
                s = at[0]
                log(f"{ct} at {latency_at} calls/s: INVITE->100 p50 {fmt_ms(s.lat100[0])} "
                    f"ms, p99 {fmt_ms(s.lat100[1])} ms, max {fmt_ms(s.lat100_max)} ms "
                    f"({s.lat100[2]} samples); failed {s.failed}, shed {s.shed}, "
                    f"retransmissions {s.retrans_uac}/{s.retrans_uas}")
    return summaries
