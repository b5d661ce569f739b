"""A real PostgreSQL server for tests and benchmarks: initdb in a temporary directory,
`postgres` on a free loopback port (as the `postgres` user when run as root: the server
refuses root), stopped by its PID. Debian's `postgresql` package provides the binaries."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PostgresServer:
    def __init__(self, durable: bool = False) -> None:
        self.port = _free_port()
        self.durable = durable  # fsync on: for benchmarks that measure writes honestly
        self.dir = Path(tempfile.mkdtemp(prefix="calltrackd-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> str | None:
        """The user the server runs as: ours, or `postgres` when we are root."""
        if os.geteuid() != 0:
            return None
        shutil.chown(self.dir, "postgres", "postgres")
        return "postgres"

    def start(self) -> None:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        if initdb is None or postgres is None:
            raise RuntimeError("PostgreSQL is not installed: run the README's test command")
        self._user = self._run_as()
        data = self.dir / "data"
        if not data.exists():
            subprocess.run([initdb, "-N", "-D", str(data), "-U", "postgres", "--auth=trust",
                            "-E", "UTF8", "--locale=C.UTF-8"], user=self._user,
                           group=self._user, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, cwd=self.dir)
        settings = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                    "-k", str(self.dir), "-c", "shared_buffers=256MB",
                    "-c", "work_mem=64MB", "-c", "max_connections=200"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]
        log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen([postgres, "-D", str(data), *settings], user=self._user,
                                     group=self._user, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: "
                                   + (self.dir / "postgres.log").read_text()[-2000:])
            if self._ready():
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not start within 60 s")

    def _ready(self) -> bool:
        psql = pg_bin("pg_isready")
        if psql is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        return subprocess.run([psql, "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server by its PID, remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
