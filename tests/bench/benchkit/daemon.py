"""calltrackd as the system under test: its configuration, the process, its call records
and the visitor sessions the tracking variant renews."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .common import ADMIN_TOKEN, PUBLIC_KEY, ROOT, STATIC_NUMBER
from .metrics import http_json, parse_metrics
from .procs import Procs, tail


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
    """One `python -m calltrackd run` in its own working directory (`command`: what
    replaces `python -m calltrackd`, e.g. a launcher that changes the daemon for a
    benchmark; the repository's root is then on PYTHONPATH)."""

    def __init__(self, procs: Procs, workdir: Path, config: str, *, sip_port: int,
                 http_port: int, python: str = sys.executable,
                 command: Sequence[str] | None = None) -> None:
        self.procs = procs
        self.command = list(command) if command else [python, "-m", "calltrackd"]
        self.launcher = command is not None
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
        if self.launcher:
            env["PYTHONPATH"] = os.pathsep.join(
                x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
        self.proc = self.procs.start(
            [*self.command, "run", "--config", "calltrackd.toml"],
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

        stats.sent = await paced(rate, count, time.monotonic() - lead, stop, one, gate=sem)


async def paced(rate: float, count: int, start: float, stop: threading.Event,
                one: Callable[[int], Coroutine[Any, Any, None]], *,
                gate: asyncio.Semaphore | None = None, linger: float = 15.0) -> int:
    """Start one(i) as a task at start + i / rate (monotonic), for i < count or until
    `stop`, each after `gate` let it (one() releases it); then wait at most `linger` s for
    the tasks still running. Returns how many were started."""
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while i < count and not stop.is_set():
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while i < due:
            if gate is not None:
                await gate.acquire()
            t = asyncio.create_task(one(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0.005)
    if tasks:
        await asyncio.wait(tasks, timeout=linger)
    return i


# --- SIPp ------------------------------------------------------------------------------
