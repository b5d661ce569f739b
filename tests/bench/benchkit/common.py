"""Paths, the fixed figures of the benchmark configuration, and log()."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "tests" / "bench"
SCENARIOS = BENCH / "scenarios"
UAS_SCENARIO = SCENARIOS / "uas_answer_rr.xml"
UAC_SCENARIO = SCENARIOS / "uac_rtt.xml"
UAC_INF_SCENARIO = SCENARIOS / "uac_rtt_inf.xml"
KAMAILIO_CFG = BENCH / "kamailio-proxy.cfg"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
HZ = os.sysconf("SC_CLK_TCK")
ADMIN_TOKEN = "bench-admin-token"
PUBLIC_KEY = "pk_bench"
STATIC_NUMBER = "+74990000100"
CALLER = "+79161234567"
SYSTEMS = ("calltrackd-tracking", "calltrackd", "sippy", "kamailio")


def log(msg: str) -> None:
    print(msg, flush=True)
