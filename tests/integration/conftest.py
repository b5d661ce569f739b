"""Integration harness: the daemon as a process, SIPp as carrier and PBX, on loopback.

Every process started here is bounded in time and stopped by the fixture that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
ADMIN = "test-admin-token"
CALLER = "+79161234567"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


SQLITE = "sqlite:///./var/calltrackd.db"  # the embedded store, in the daemon's directory
LOOPBACK = {"name": "loopback", "addresses": ["127.0.0.0/8"], "default_country": "RU"}


def pbx_uri(port: int, transport: str = "udp", host: str = "127.0.0.1") -> str:
    return f"sip:{host}:{port};transport={transport}"


def tracker(id: str, default_number: str, *forward: str | dict[str, Any],
            **keys: Any) -> dict[str, Any]:
    """One [[trackers]] entry: public key pk_<id>, forwarding to `forward` in order; `keys`
    adds the rest, sub-tables as lists of dicts (pools=[{...}], static=[{...}])."""
    return {"id": id, "public_key": f"pk_{id}", "default_number": default_number,
            "forward": list(forward), **keys}


def daemon_toml(sip_port: int, http_port: int, *trackers: dict[str, Any], store: str = SQLITE,
                carriers: list[dict[str, Any]] | None = None, **sections: dict[str, Any]) -> str:
    """The daemon's configuration file: [sip] on UDP 127.0.0.1:`sip_port`, [http] on
    127.0.0.1:`http_port` with the tests' admin token, the store, one loopback carrier,
    the trackers. `sections` adds keys to a section or replaces them (sip={"listen": [...],
    "shutdown_grace": "5s"}, log={"level": "debug"}, webhooks={...}). The text is laid out
    as a person writes it (`key = value`, sub-tables indented), so a test can still edit
    it (a SIGHUP reload) with str.replace."""
    doc: dict[str, Any] = {
        "sip": {"listen": [f"udp:127.0.0.1:{sip_port}"]},
        "http": {"listen": f"127.0.0.1:{http_port}", "admin_token": ADMIN},
        "store": {"url": store},
    }
    for name, keys in sections.items():
        doc[name] = {**doc.get(name, {}), **keys}
    doc["carriers"] = [LOOPBACK] if carriers is None else carriers
    doc["trackers"] = list(trackers)
    return toml_text(doc)


def toml_text(doc: dict[str, Any]) -> str:
    """`doc` as TOML: tables for dicts, arrays of tables for lists of dicts."""
    lines: list[str] = []

    def table(keys: dict[str, Any], path: str) -> None:
        indent = "  " * path.count(".")  # [[trackers.pools]] and its keys: indented
        lines.extend(f"{indent}{k} = {_toml_value(v)}" for k, v in keys.items()
                     if not _is_table(v))
        for key, value in keys.items():
            if _is_table(value):
                name = f"{path}.{key}" if path else key
                head = f"[[{name}]]" if isinstance(value, list) else f"[{name}]"
                for entry in value if isinstance(value, list) else [value]:
                    lines.extend([f"{'  ' * name.count('.')}{head}"] if path else ["", head])
                    table(entry, name)

    table(doc, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run the README's test command (scripts/test)")
    return path


def by_did(did: str) -> Callable[[dict[str, Any]], bool]:
    """A `Daemon.wait_call` predicate: the call to `did` (bound now, also inside a loop)."""
    return lambda call: call["did"] == did


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    sip_port: int
    http_port: int
    config: Path
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)
    admin_token: str = ADMIN

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def http(self, method: str, path: str, body: Any = None, admin: bool = True,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if admin:
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def calls(self, **params: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, body = self.http("GET", f"/v1/calls?{query}")
        assert status == 200, body
        return list(body["calls"])

    def wait_call(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                  **params: str) -> dict[str, Any]:
        """The newest CDR matching `pred`, once it has its final outcome."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.calls(**params)
            for call in seen:  # newest first: the newest match, once it has finished
                if pred(call):
                    if call["outcome"] is not None:
                        return call
                    break  # still being written: not an older call instead
            time.sleep(0.1)
        raise AssertionError(f"no matching finished call; saw {seen}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_daemon(tmp: Path, config_text: str, sip_port: int, http_port: int,
                 timeout: float = 15.0, env: dict[str, str] | None = None) -> Daemon:
    cfg = tmp / "calltrackd.toml"
    cfg.write_text(config_text)
    log = tmp / "daemon.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "calltrackd", "run", "--config", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env,
        )
    daemon = Daemon(proc, sip_port, http_port, cfg, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{daemon.log_text()}")
        try:
            with urllib.request.urlopen(f"{daemon.base}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return daemon
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"daemon not healthy in {timeout}s:\n{daemon.log_text()}")


# one entry of SIPp's -trace_msg file; the byte count gives the message's exact extent.
# Not anchored at a line start: SIPp's "message lost" note has no newline after it.
_TRACE_ENTRY = re.compile(rb"-{47} [^\n]*\n(?:UDP|TCP) message (sent|received) "
                          rb"(?:\[(\d+)\] bytes :|\((\d+) bytes\):)\n\n")


@dataclass(frozen=True)
class SipTrace:
    """One SIP message as SIPp sent or received it, byte for byte."""

    sent: bool
    raw: bytes

    @property
    def start_line(self) -> str:
        return self.raw.split(b"\r\n", 1)[0].decode(errors="replace")

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        head = self.raw.partition(b"\r\n\r\n")[0].decode(errors="replace")
        for line in head.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def cseq_method(self) -> str:
        parts = (self.header("CSeq") or "").split()
        return parts[-1] if parts else ""


@dataclass
class SippResult:
    returncode: int
    output: str
    stats: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Sipp:
    """One SIPp process. UAS ones run in the background; UAC ones usually to completion."""

    def __init__(self, tmp: Path, name: str, scenario: str, port: int, *args: str,
                 remote: str | None = None, transport: str = "udp") -> None:
        self.tmp = tmp
        self.name = name
        cmd = [need("sipp"), "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1",
               "-p", str(port), "-nostdin", "-trace_stat", "-stf", str(tmp / f"{name}.csv"),
               "-trace_err", "-error_file", str(tmp / f"{name}_errors.log"),
               "-trace_msg", "-message_file", str(tmp / f"{name}_messages.log"),
               "-t", "u1" if transport == "udp" else "t1",
               "-key", "caller", CALLER, *args]
        if remote:
            cmd.append(remote)
        self.cmd = cmd
        self.shed = 0  # single calls the daemon shed at the door and this UAC placed again
        self._spawn()

    def _spawn(self) -> None:
        self.out = open(self.tmp / f"{self.name}.out", "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.tmp)

    def wait(self, timeout: float = 60.0) -> SippResult:
        while True:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if not self.again_if_shed():
                break
        self.out.close()
        return SippResult(self.proc.returncode, self._output(), self._stats())

    def again_if_shed(self) -> bool:
        """A UAC of one call that the daemon shed at the door (503 with Retry-After: 1
        before any 100 Trying: the busy machine's load shedding; no call exists, nothing
        reached the PBX) places it again a second later, as a carrier would: at most 5
        times. True if it did. `wait` does this; a test watching a call may call it."""
        one_call = "-m" in self.cmd and self.cmd[self.cmd.index("-m") + 1] == "1"
        if not one_call or self.proc.poll() in (None, 0) or self.shed >= 5:
            return False
        self.out.close()
        output = self._output()
        if not ("while expecting '100'" in output and "Retry-After: 1" in output
                and "received 'SIP/2.0 503 Service Unavailable" in output):
            return False
        self.shed += 1
        time.sleep(1)
        (self.tmp / f"{self.name}_errors.log").unlink(missing_ok=True)
        self._spawn()
        return True

    def _output(self) -> str:
        output = (self.tmp / f"{self.name}.out").read_text(errors="replace")
        errors = self.tmp / f"{self.name}_errors.log"
        if errors.exists():
            output += "\n--- errors ---\n" + errors.read_text(errors="replace")[-4000:]
        return output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self.out.closed:
            self.out.close()

    def _stats(self) -> dict[str, str]:
        path = self.tmp / f"{self.name}.csv"
        if not path.exists():
            return {}
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if len(lines) < 2:
            return {}
        head = lines[0].rstrip(";").split(";")
        last = lines[-1].rstrip(";").split(";")
        return dict(zip(head, last, strict=False))

    def messages(self) -> str:
        path = self.tmp / f"{self.name}_messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def traces(self) -> list[SipTrace]:
        """Every SIP message in the -trace_msg file, in order (lost ones included)."""
        path = self.tmp / f"{self.name}_messages.log"
        data = path.read_bytes() if path.exists() else b""
        return [SipTrace(m[1] == b"sent", data[m.end():m.end() + int(m[2] or m[3])])
                for m in _TRACE_ENTRY.finditer(data)]


@contextlib.contextmanager
def sipp_processes(tmp: Path) -> Iterator[Callable[..., Sipp]]:
    """A factory of SIPp processes writing to `tmp`; every one is killed on the way out."""
    started: list[Sipp] = []

    def make(name: str, scenario: str, port: int, *args: str, remote: str | None = None,
             transport: str = "udp") -> Sipp:
        s = Sipp(tmp, name, scenario, port, *args, remote=remote, transport=transport)
        started.append(s)
        return s

    try:
        yield make
    finally:
        for s in started:
            s.kill()


@pytest.fixture
def sipp_factory(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    with sipp_processes(tmp_path) as make:
        yield make


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that fails the first `fail_first` requests."""

    port: int
    fail_first: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=500, text="not now")
        self.received.append({
            "headers": dict(request.headers),
            "body": body,
            "json": json.loads(body),
        })
        return web.Response(status=204)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["json"]["event"] == name]

    def wait_event(self, name: str, did: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.events(name):
                if r["json"]["call"]["did"] == did:
                    return r
            time.sleep(0.1)
        raise AssertionError(f"no {name} for {did}; got {[r['json'] for r in self.received]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    r.start()
    yield r
    r.stop()


class Redis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the README's test command")
        # AOF with fsync on every write: what the store acknowledged survives a kill
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path / "redis")
    r.dir.mkdir()
    r.start()
    yield r
    r.kill()


@contextlib.contextmanager
def store_at(kind: str, tmp: Path) -> Iterator[str]:
    """The url of a store of `kind` ("sqlite": a file in the daemon's directory; "redis":
    a redis-server of its own in `tmp`, killed on the way out), for module-wide daemons."""
    if kind == "sqlite":
        yield SQLITE
        return
    r = Redis(tmp / "redis")
    r.dir.mkdir()
    r.start()
    try:
        yield r.url
    finally:
        r.kill()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs on both stores: the embedded SQLite one (a file in the
    daemon's directory) and Redis (a fresh redis-server of its own)."""
    if request.param == "sqlite":
        return SQLITE
    r: Redis = request.getfixturevalue("redis")
    return r.url
