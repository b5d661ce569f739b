"""The processes a benchmark starts (each in its own group, all killed on exit), their CPU
and memory, free ports and signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import HZ, log

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


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by `pid` alone; 0 once it is
    gone."""
    f = _stat_fields(pid)
    return 0.0 if f is None else (int(f[11]) + int(f[12])) / HZ


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
