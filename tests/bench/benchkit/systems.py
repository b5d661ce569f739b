"""The systems compared: calltrackd (tracking on / routing only), Sippy B2BUA, Kamailio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import KAMAILIO_CFG, STATIC_NUMBER, UAC_INF_SCENARIO, UAC_SCENARIO, log
from .daemon import (
    Daemon,
    RenewStats,
    all_calls,
    code_version,
    daemon_toml,
    pool_numbers,
    renew_paced,
    reserve_sessions,
)
from .metrics import histogram_quantile, http_json, parse_histogram, parse_metrics
from .procs import Procs, free_port, tail, wait_udp_bound
from .record import Step
from .sipp import pct


class System:
    name = ""
    sip_port = 0

    def __init__(self, procs: Procs, workdir: Path, pbx_port: int) -> None:
        self.procs = procs
        self.workdir = workdir
        self.pbx_port = pbx_port
        workdir.mkdir(parents=True, exist_ok=True)

    def version(self) -> str:
        return ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pid(self) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def before_step(self, rate: int, seconds: int, stepdir: Path) -> list[str]:
        """Prepare a step; returns the SIPp arguments that pick the dialled numbers."""
        return ["-sf", str(UAC_SCENARIO), "-s", STATIC_NUMBER]

    @contextlib.contextmanager
    def during_step(self, rate: int, seconds: int, step: Step) -> Iterator[None]:
        yield

    def after_step(self, step: Step) -> None:
        pass

    def problems(self) -> str:
        return ""


class CalltrackdSystem(System):
    def __init__(self, procs: Procs, workdir: Path, pbx_port: int, *, tracking: bool,
                 pool_size: int, python: str) -> None:
        super().__init__(procs, workdir, pbx_port)
        self.tracking = tracking
        self.name = "calltrackd-tracking" if tracking else "calltrackd"
        self.pool = pool_numbers(pool_size if tracking else 10)
        self.python = python
        self.sip_port = free_port()
        self.http_port = free_port(socket.SOCK_STREAM)
        self.daemon: Daemon | None = None
        self.runs = 0
        self.metrics0: dict[str, float] = {}
        self.hist0: dict[float, float] = {}
        self.sessions: list[tuple[str, str]] = []
        self.renew = RenewStats()
        self.problem_log: dict[str, int] = {}

    def version(self) -> str:
        return code_version(self.python).removeprefix("calltrackd ")

    def _new_daemon(self) -> None:
        self._stop_daemon()
        self.runs += 1
        config = daemon_toml(sip_port=self.sip_port, http_port=self.http_port,
                             pbx_port=self.pbx_port, pool=self.pool)
        self.daemon = Daemon(self.procs, self.workdir / f"daemon{self.runs}", config,
                             sip_port=self.sip_port, http_port=self.http_port,
                             python=self.python)
        self.daemon.start()

    def _stop_daemon(self) -> None:
        if self.daemon is not None:
            for k, v in self.daemon.log_problems().items():
                self.problem_log[k] = self.problem_log.get(k, 0) + v
            self.daemon.stop()
            self.daemon = None

    def start(self) -> None:
        if not self.tracking:
            self._new_daemon()

    def stop(self) -> None:
        self._stop_daemon()

    def root_pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def before_step(self, rate: int, seconds: int, stepdir: Path) -> list[str]:
        if not self.tracking:
            self._snapshot()
            return super().before_step(rate, seconds, stepdir)
        # a fresh daemon (a free pool), then one visitor session per number SIPp will dial
        self._new_daemon()
        assert self.daemon is not None
        n = min(len(self.pool), rate * seconds)
        t0 = time.monotonic()
        self.sessions = asyncio.run(reserve_sessions(self.daemon.base, n))
        took = time.monotonic() - t0
        log(f"  reserved {n} sessions in {took:.1f} s ({n / took:.0f}/s) before the step")
        inf = stepdir / "numbers.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(f"{num}\n" for _, num in self.sessions))
        self._snapshot()
        return ["-sf", str(UAC_INF_SCENARIO), "-inf", str(inf)]

    def _snapshot(self) -> None:
        assert self.daemon is not None
        text = self.daemon.metrics_text()
        self.metrics0 = parse_metrics(text)
        self.hist0 = parse_histogram(text, "calltrackd_invite_seconds")

    @contextlib.contextmanager
    def during_step(self, rate: int, seconds: int, step: Step) -> Iterator[None]:
        assert self.daemon is not None
        daemon = self.daemon
        stop = threading.Event()
        threads = [threading.Thread(target=self._watch_loop, args=(daemon, stop, step),
                                    name="stall-watch", daemon=True)]
        if self.tracking:
            self.renew = RenewStats()
            threads.append(threading.Thread(
                target=lambda: asyncio.run(renew_paced(daemon.base, self.sessions, rate,
                                                       rate * seconds, 0.2, stop, self.renew)),
                name="renew", daemon=True))
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join(30)

    @staticmethod
    def _watch_loop(daemon: Daemon, stop: threading.Event, step: Step) -> None:
        """How long GET /healthz waits, every 0.5 s: the daemon's event loop stalls, and
        when in the step they happened."""
        t0 = time.monotonic()
        worst = 0.0
        stalls: list[str] = []
        while not stop.wait(0.5):
            a = time.monotonic()
            try:
                http_json(daemon.base + "/healthz", token=None, timeout=5)
            except (OSError, ValueError):
                pass
            took = time.monotonic() - a
            worst = max(worst, took)
            if took > 0.1:
                stalls.append(f"{took * 1000:.0f} ms at {a - t0:.0f} s")
        step.loop_stall_ms = worst * 1000
        if stalls:
            step.notes.append("loop stalls (GET /healthz) " + ", ".join(stalls[:6])
                              + (" ..." if len(stalls) > 6 else ""))

    def after_step(self, step: Step) -> None:
        d = self.daemon
        if d is None or not d.alive():
            step.notes.append("calltrackd died")
            return
        time.sleep(1.0)
        text = d.metrics_text()
        m = parse_metrics(text)
        q = histogram_quantile(self.hist0, parse_histogram(text, "calltrackd_invite_seconds"),
                               0.99)
        if q is not None:
            step.notes.append(f"daemon INVITE->forwarded p99 <= {q * 1000:g} ms")
        def delta(name: str) -> int:
            return int(m.get(name, 0.0) - self.metrics0.get(name, 0.0))
        step.shed = delta("calltrackd_overload_rejected_total")
        step.daemon_retrans = delta("calltrackd_sip_retransmissions_total")
        if step.daemon_retrans:
            step.notes.append(f"daemon retrans {step.daemon_retrans}")
        if not self.tracking:
            return
        r = self.renew
        lat = sorted(r.latencies)
        step.notes.append(f"API renewals {r.ok}/{r.sent} ok, p99 "
                          f"{(pct(lat, 0.99) or 0) * 1000:.0f} ms")
        # every answered call must be attributed to the session that held its number
        deadline = time.monotonic() + 20
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = all_calls(d)
            if len(calls) >= step.ok:
                break
            time.sleep(1.0)
        kinds: dict[str, int] = {}
        for c in calls:
            kind = (c.get("attribution") or {}).get("kind", "none")
            kinds[kind] = kinds.get(kind, 0) + 1
        dyn = kinds.get("dynamic", 0)
        other = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if k != "dynamic")
        step.notes.append(f"CDRs {len(calls)}, dynamic {dyn}" + (f" ({other})" if other else ""))

    def problems(self) -> str:
        bad = {k: v for k, v in self.problem_log.items() if not k.startswith("info")}
        return "; ".join(f"{k} x{v}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1])[:8])


class SippySystem(System):
    name = "sippy"

    def __init__(self, procs: Procs, workdir: Path, pbx_port: int, *, scratch: Path,
                 siplog: str) -> None:
        super().__init__(procs, workdir, pbx_port)
        self.venv = scratch / "venv-sippy"
        self.sip_port = free_port()
        self.siplog = siplog
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        exe = self.venv / "bin" / "b2bua_simple"
        if exe.exists():
            return
        log(f"installing Sippy into {self.venv} (pip install sippy)")
        pip_log = self.venv.parent / "pip-sippy.log"
        with open(pip_log, "wb") as out:
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True,
                           timeout=300, stdout=out, stderr=subprocess.STDOUT)
            rc = subprocess.run([str(self.venv / "bin" / "pip"), "install", "sippy"],
                                timeout=900, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc or not exe.exists():
            raise RuntimeError(f"pip install sippy failed ({pip_log}):\n" + tail(pip_log))

    def version(self) -> str:
        try:
            return subprocess.run(
                [str(self.venv / "bin" / "python"), "-c",
                 "import importlib.metadata as m; print(m.version('sippy'))"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    def start(self) -> None:
        self.install()
        env = dict(os.environ, SIPLOG_BEND=self.siplog)
        self.proc = self.procs.start(
            [str(self.venv / "bin" / "b2bua_simple"), "-f", "-l", "127.0.0.1", "-p",
             str(self.sip_port), "-n", f"127.0.0.1:{self.pbx_port}"],
            cwd=self.workdir, out=self.workdir / "sippy.log", env=env)
        wait_udp_bound(self.sip_port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KamailioSystem(System):
    name = "kamailio"

    def __init__(self, procs: Procs, workdir: Path, pbx_port: int, *, children: int) -> None:
        super().__init__(procs, workdir, pbx_port)
        self.sip_port = free_port()
        self.children = children
        self.proc: subprocess.Popen[bytes] | None = None
        self.exe = shutil.which("kamailio") or "/usr/sbin/kamailio"

    def install(self) -> None:
        if Path(self.exe).exists():
            return
        log("installing Kamailio (apt-get install kamailio)")
        subprocess.run(["apt-get", "install", "-y", "-q", "kamailio"], check=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        self.exe = shutil.which("kamailio") or "/usr/sbin/kamailio"

    def version(self) -> str:
        try:
            out = subprocess.run([self.exe, "-v"], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        m = re.search(r"version: kamailio ([\w.\-]+)", out)
        return m.group(1) if m else "?"

    def start(self) -> None:
        self.install()
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        self.proc = self.procs.start(
            [self.exe, "-f", str(KAMAILIO_CFG), "-DD", "-E", "-m", "2048", "-x", "tlsf",
             "-Y", str(rundir), "-w", str(self.workdir),
             "-A", f"LISTEN=udp:127.0.0.1:{self.sip_port}",
             "-A", f'PBX="sip:127.0.0.1:{self.pbx_port}"',
             "-A", f"CHILDREN={self.children}"],
            cwd=self.workdir, out=self.workdir / "kamailio.log")
        wait_udp_bound(self.sip_port, self.proc)
        time.sleep(1.0)  # the workers fork after the socket is bound

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
