"""One step (a call rate for some seconds through one system) and its table row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .common import log
from .sipp import fmt_ms, fmt_pct, pct

# a rate counts as sustained with 0 failed calls and retransmissions at most this share
MAX_RETRANS_SHARE = 0.01


@dataclass
class Step:
    system: str
    rate: int
    seconds: int
    calls: int = 0
    ok: int = 0
    failed: int = 0
    causes: str = ""
    retrans_uac: int = 0
    retrans_uas: int = 0
    lat100: tuple[float | None, float | None, int] = (None, None, 0)  # p50, p99, samples
    lat180: tuple[float | None, float | None, int] = (None, None, 0)
    lat200: tuple[float | None, float | None, int] = (None, None, 0)
    lat100_max: float | None = None
    proxy_cpu: float | None = None
    uac_cpu: float | None = None
    uas_cpu: float | None = None
    client_cpu: float | None = None
    wall: float = 0.0
    shed: int | None = None
    daemon_retrans: int | None = None
    loop_stall_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.failed == 0 and self.calls > 0 and self.ok == self.calls

    @property
    def sustained(self) -> bool:
        """Clean and not queueing: retransmissions (UAC + UAS) at most 1% of the calls.
        A proxy that queues still completes every call for a while, but its callers see
        seconds of set-up time and retransmit (Sippy at 300 CPS: 0 failed, 47,695
        retransmissions, INVITE->100 p99 8.9 s)."""
        return self.clean and self.retrans_uac + self.retrans_uas <= MAX_RETRANS_SHARE * self.calls


def lat_triple(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    return pct(values, 0.50), pct(values, 0.99), len(values)


STEP_HEAD = ["rate", "calls", "failed", "retr uac/uas", "100 p50/p99 ms", "180 p50/p99 ms",
             "200 p50/p99 ms", "proxy CPU", "SIPp CPU uac/uas", "shed", "notes"]


def step_row(s: Step) -> list[str]:
    def lat(t: tuple[float | None, float | None, int]) -> str:
        return "-" if t[2] == 0 else f"{fmt_ms(t[0])}/{fmt_ms(t[1])}"
    notes = list(s.notes)
    if s.causes:
        notes.insert(0, s.causes)
    return [str(s.rate), str(s.calls), str(s.failed), f"{s.retrans_uac}/{s.retrans_uas}",
            lat(s.lat100), lat(s.lat180), lat(s.lat200), fmt_pct(s.proxy_cpu),
            f"{fmt_pct(s.uac_cpu)}/{fmt_pct(s.uas_cpu)}",
            "-" if s.shed is None else str(s.shed), "; ".join(notes)]


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    def line(r: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i < len(r) - 1 else str(c)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def print_row(row: Sequence[str], widths: Sequence[int]) -> None:
    log("  " + "  ".join(c.rjust(w) if i < len(row) - 1 else c
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))))


WIDTHS = [5, 6, 6, 12, 14, 14, 14, 9, 16, 5, 0]


# --- the systems under test --------------------------------------------------------
