"""SIPp: version, its statistics files and response-time traces, the PBX it plays."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .common import SIPP, UAS_SCENARIO
from .procs import Procs


def sipp_version() -> str:
    try:
        out = subprocess.run([SIPP, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"SIPp v?([\w.\-]+)", out)
    return m.group(1) if m else "?"


def read_stat_csv(path: Path) -> dict[str, str]:
    """The last line of a SIPp -trace_stat file, by column name."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(head, last, strict=False))


def stat_int(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0") or 0)
    except ValueError:
        return 0


def failure_causes(stats: dict[str, str]) -> str:
    causes = []
    for k, v in stats.items():
        if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)":
            try:
                n = int(v)
            except ValueError:
                continue
            if n:
                causes.append(f"{k[6:-3]}={n}")
    return ",".join(causes)


def read_rtt(directory: Path) -> dict[int, list[float]]:
    """All response times (ms) from SIPp's -trace_rtt files in `directory`, by timer."""
    out: dict[int, list[float]] = {}
    for f in directory.glob("*_rtt.csv"):
        for line in f.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                try:
                    out.setdefault(int(parts[2]), []).append(float(parts[1]))
                except ValueError:
                    continue
    return out


def pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)  # nearest rank
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def fmt_ms(v: float | None) -> str:
    """SIPp's response times are whole milliseconds: 0 means within the same tick."""
    if v is None:
        return "-"
    return "<1" if v < 1 else f"{v:.0f}"


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def start_uas(procs: Procs, directory: Path, port: int) -> subprocess.Popen[bytes]:
    return procs.start(
        [SIPP, "-sf", str(UAS_SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-nostdin",
         "-trace_stat", "-stf", "uas_stat.csv", "-fd", "1", "-trace_err"],
        cwd=directory, out=directory / "uas.out")


# --- one step --------------------------------------------------------------------------
