"""A real rtpengine for tests: userspace (`table = -1`), on loopback, in a temporary
directory, recording to pcap; started by the test and stopped by its PID."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from calltrackd.media import bencode


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rtpengine:
    def __init__(self, directory: Path, port_min: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spool = self.dir / "spool"
        self.port = free_udp_port()
        # media ports: a random block, so parallel runs seldom meet
        self.port_min = port_min or random.randrange(20000, 29000, 1000)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "rtpengine.log"

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("rtpengine")
        if binary is None:
            pytest.fail("rtpengine is not installed: run the README's test command "
                        "(scripts/test installs rtpengine-daemon)")
        conf = self.dir / "rtpengine.conf"
        conf.write_text(f"""[rtpengine]
table = -1
interface = 127.0.0.1
listen-ng = 127.0.0.1:{self.port}
port-min = {self.port_min}
port-max = {self.port_min + 999}
delete-delay = 0
timeout = 60
recording-dir = {self.spool}
recording-method = pcap
log-level = 6
log-stderr = true
foreground = true
""")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([binary, f"--config-file={conf}"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rtpengine exited {self.proc.returncode}:\n"
                                     + self.log.read_text(errors="replace"))
            if self.ping():
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("rtpengine did not answer ping:\n"
                             + self.log.read_text(errors="replace"))

    def ping(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            try:
                s.sendto(b"probe " + bencode.encode({"command": "ping"}),
                         ("127.0.0.1", self.port))
                return b"pong" in s.recv(4096)
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
