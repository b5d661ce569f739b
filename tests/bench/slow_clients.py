"""Slow clients against the HTTP port: how many stay open, and does the API still answer.

    .venv/bin/python tests/bench/slow_clients.py [--connections 1400] [--header-timeout 10s]

Starts `calltrackd run` (embedded store), opens N connections that send a request line
and then one header byte every second (slow loris), waits header-timeout + 5 s and counts
how many the daemon has closed, timing a GET /healthz meanwhile. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

from tests.bench.bench_sessions import free_port

CONFIG = """
[sip]
listen = ["udp:127.0.0.1:{sip}"]
[http]
listen = "127.0.0.1:{http}"
header_timeout = "{timeout}"
[store]
url = "sqlite:///./var/bench.db"
[log]
level = "warning"
"""


async def loris(port: int, stop: float, closed: list[int]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        closed[1] += 1
        return
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        while time.monotonic() < stop:
            writer.write(b"X")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    closed[0] += 1
                    return
            except TimeoutError:
                continue
    except OSError:
        closed[0] += 1
        return
    finally:
        writer.close()


async def health_ms(port: int) -> float:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    return (time.perf_counter() - t0) * 1000


async def main_async(args: argparse.Namespace, port: int) -> None:
    wait = float(args.header_timeout.rstrip("s")) + 5
    stop = time.monotonic() + wait
    closed = [0, 0]
    tasks = [asyncio.create_task(loris(port, stop, closed)) for _ in range(args.connections)]
    await asyncio.sleep(2)
    during = await health_ms(port)
    await asyncio.gather(*tasks)
    still_open = args.connections - closed[0] - closed[1]
    print(f"connections: {args.connections}, closed by the daemon within "
          f"{wait:.0f} s: {closed[0]}, still open: {still_open}, refused: {closed[1]}")
    print(f"GET /healthz while they were open: {during:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1400)
    ap.add_argument("--header-timeout", default="10s")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    sip, http = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.toml"
        cfg.write_text(CONFIG.format(sip=sip, http=http, timeout=args.header_timeout))
        proc = subprocess.Popen([sys.executable, "-m", "calltrackd", "run", "--config",
                                 str(cfg)], cwd=tmp, env=dict(os.environ),
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            asyncio.run(main_async(args, http))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print("command: .venv/bin/python tests/bench/slow_clients.py "
          f"--connections {args.connections} --header-timeout {args.header_timeout}")


if __name__ == "__main__":
    main()
