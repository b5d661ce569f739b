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
import asyncio
import contextlib
import json
import math
import operator
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
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


# --- processes ---------------------------------------------------------------------


class Procs:
    """Every process the benchmark starts: each in its own process group, all killed on
    exit (SIGTERM to the group, SIGKILL after a grace period)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], *, cwd: Path, out: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(out, "wb") as f:
            p = subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], grace: float = 10.0,
             sig: int = signal.SIGTERM) -> None:
        if p.returncode is None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        # children the leader left behind (Kamailio's workers)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p, grace=5.0)


def pname(p: subprocess.Popen[bytes]) -> str:
    args = p.args
    first: Any = args[0] if isinstance(args, list | tuple) else args
    return Path(os.fsdecode(first)).name


def wait_rusage(p: subprocess.Popen[bytes], timeout: float,
                tick: Callable[[], None] | None = None) -> tuple[int, float]:
    """Wait for a child (at most `timeout` s, then kill its group) and return its exit code
    and the CPU seconds it used (user + system, all threads) from wait4."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            log(f"  ! {pname(p)} (pid {p.pid}) killed after {timeout:.0f} s")
            return p.returncode, ru.ru_utime + ru.ru_stime
        if tick is not None:
            tick()
        time.sleep(0.05)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(d.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by `pid` and its descendants."""
    total = 0
    for p in {pid} | descendants(pid):
        f = _stat_fields(p)
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total / HZ


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def wait_udp_bound(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until something listens on UDP 127.0.0.1:port (the proxy under test is up)."""
    deadline = time.monotonic() + timeout
    hexport = f"{port:04X}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{pname(proc)} exited with {proc.returncode}")
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            local = line.split()[1]
            if local.endswith(":" + hexport):
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on udp 127.0.0.1:{port} after {timeout:.0f} s")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C does: through the finally blocks."""
    def bye(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGHUP, bye)


# --- HTTP (the daemon's API) ----------------------------------------------------------


def http_json(url: str, *, token: str | None = ADMIN_TOKEN, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus exposition -> {name: value summed over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a Prometheus histogram (summed over labels)."""
    out: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if line.startswith(prefix):
            m = re.search(r'le="([^"]+)"\}\s+(\S+)$', line)
            if m:
                le = float(m.group(1))
                out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float],
                       q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    deltas = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    for le, cum in deltas:
        if cum >= q * total:
            return le
    return None


def code_version(python: str = sys.executable) -> str:
    """calltrackd's version and the git revision of the working tree (-dirty if edited)."""
    try:
        ver = subprocess.run([python, "-c", "import importlib.metadata as m, calltrackd.sip as s;"
                              "print(m.version('calltrackd'), '-', s.NATIVE)"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        ver = "?"
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return f"calltrackd {ver} (git {rev})" if rev else f"calltrackd {ver}"


# --- calltrackd ---------------------------------------------------------------------


def daemon_toml(*, sip_port: int, http_port: int, pbx_port: int, pool: Sequence[str],
                max_calls: int = 0, webhook_url: str | None = None,
                webhook_concurrency: int | None = None) -> str:
    numbers = ",\n    ".join(", ".join(json.dumps(n) for n in pool[i:i + 8])
                             for i in range(0, len(pool), 8))
    text = f"""# written by tests/bench: one node, embedded store, loopback only
[sip]
listen = ["udp:127.0.0.1:{sip_port}"]
max_calls = {max_calls}
shutdown_grace = "3s"

[http]
listen = "127.0.0.1:{http_port}"
admin_token = "{ADMIN_TOKEN}"
session_rate_limit = 0

[store]
url = "sqlite:///./var/calltrackd.db"

[log]
level = "warning"
format = "json"
"""
    if webhook_concurrency is not None:
        text += f"\n[webhooks]\nconcurrency = {webhook_concurrency}\n"
    text += f"""
[[carriers]]
name = "loopback"
addresses = ["127.0.0.0/8"]
did_from = "ruri"
default_country = "RU"

[[trackers]]
id = "bench"
public_key = "{PUBLIC_KEY}"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:{pbx_port};transport=udp"]
reservation_ttl = "30m"
cooldown = "0s"

  [[trackers.pools]]
  name = "web"
  sources = ["*"]
  numbers = [
    {numbers}]

  [[trackers.static]]
  number = "{STATIC_NUMBER}"
  channel = "billboard"
"""
    if webhook_url is not None:
        text += f"""
  [[trackers.webhooks]]
  url = "{webhook_url}"
  secret = "whsec_bench_secret"
"""
    return text


def pool_numbers(n: int) -> list[str]:
    return [f"+749920{i:05d}" for i in range(n)]


class Daemon:
    """One `python -m calltrackd run` in its own working directory."""

    def __init__(self, procs: Procs, workdir: Path, config: str, *, sip_port: int,
                 http_port: int, python: str = sys.executable) -> None:
        self.procs = procs
        self.workdir = workdir
        self.config = config
        self.sip_port = sip_port
        self.http_port = http_port
        self.python = python
        self.base = f"http://127.0.0.1:{http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "calltrackd.toml").write_text(self.config)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = self.procs.start(
            [self.python, "-m", "calltrackd", "run", "--config", "calltrackd.toml"],
            cwd=self.workdir, out=self.log_path, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"calltrackd exited with {self.proc.returncode}:\n"
                                   + tail(self.log_path))
            try:
                if http_json(self.base + "/healthz", token=None, timeout=1).get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"calltrackd not healthy after {timeout:.0f} s:\n"
                           + tail(self.log_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics_text(self) -> str:
        try:
            with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def get(self, path: str) -> Any:
        return http_json(self.base + path)

    def log_problems(self) -> dict[str, int]:
        """Counts of warning/error/critical lines in the daemon's JSON log, by event."""
        out: dict[str, int] = {}
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                key = "non-json: " + line[:80]
            else:
                if not isinstance(rec, dict):
                    continue
                key = f"{rec.get('level', '?')}: {str(rec.get('event', ''))[:80]}"
            out[key] = out.get(key, 0) + 1
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, grace=30.0)


def all_calls(d: Daemon, limit_pages: int = 200) -> list[dict[str, Any]]:
    """Every CDR of the bench tracker (newest first), through the cursor."""
    out: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(limit_pages):
        page = d.get(f"/v1/calls?tracker=bench&limit=1000{cursor}")
        out.extend(page["calls"])
        if not page.get("next_cursor"):
            break
        cursor = "&cursor=" + urllib.parse.quote(page["next_cursor"])
    return out


# --- the API load of the tracking variant ------------------------------------------


def _session_body(i: int, session_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"tracker": PUBLIC_KEY, "client_id": f"GA1.2.{i}.1",
                            "utm_source": "google", "utm_medium": "cpc",
                            "utm_campaign": "bench"}
    if session_id:
        body["session_id"] = session_id
    return body


async def reserve_sessions(base: str, n: int, concurrency: int = 32) -> list[tuple[str, str]]:
    """n new visitor sessions -> [(session_id, number)], each a distinct pool number."""
    out: list[tuple[str, str] | None] = [None] * n
    it = iter(range(n))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async def worker() -> None:
            for i in it:
                async with client.post(base + "/v1/sessions", json=_session_body(i)) as r:
                    data = await r.json()
                    if r.status != 200 or data.get("kind") != "dynamic":
                        raise RuntimeError(f"session {i}: HTTP {r.status} {data}")
                    out[i] = (data["session_id"], data["number"])
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = [x for x in out if x is not None]
    if len({num for _, num in result}) != n:
        raise RuntimeError("the pool gave one number to two sessions")
    return result


@dataclass
class RenewStats:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


async def renew_paced(base: str, sessions: Sequence[tuple[str, str]], rate: float,
                      count: int, lead: float, stop: threading.Event,
                      stats: RenewStats) -> None:
    """Renew session i % len(sessions) at start - lead + i / rate: every call's session is
    renewed through the API just before SIPp places that call."""
    timeout = aiohttp.ClientTimeout(total=10)
    sem = asyncio.Semaphore(256)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=64)) as client:
        async def one(i: int) -> None:
            sid, number = sessions[i % len(sessions)]
            t0 = time.perf_counter()
            try:
                async with client.post(base + "/v1/sessions",
                                       json=_session_body(i, sid)) as r:
                    data = await r.json()
                    if r.status == 200 and data.get("number") == number:
                        stats.ok += 1
                    else:
                        stats.errors += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                stats.errors += 1
            finally:
                stats.latencies.append(time.perf_counter() - t0)
                sem.release()

        start = time.monotonic() - lead
        i = 0
        while i < count and not stop.is_set():
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                await sem.acquire()
                t = asyncio.create_task(one(i))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                stats.sent += 1
                i += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=15)


# --- SIPp ------------------------------------------------------------------------------


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


# --- stepping ----------------------------------------------------------------------------


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


# --- summary -------------------------------------------------------------------------


MAX_RETRANS_SHARE = 0.01


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
        steps = {name: [Step(**{k: tuple(v) if k in lats else v
                                for k, v in raw.items() if k in known}) for raw in runs]
                 for name, runs in saved["steps"].items()}
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
