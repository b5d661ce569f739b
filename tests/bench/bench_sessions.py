"""POST /v1/sessions throughput and latency against a daemon on the embedded store.

    .venv/bin/python tests/bench/bench_sessions.py [--requests 20000] [--concurrency 50]

Starts `calltrackd run` with a tracker whose pool has 1,000 numbers (rate limit off),
fires the requests from one aiohttp client (new visitors; every tenth request renews an
earlier session) and prints requests/s and latency percentiles. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """
[sip]
listen = ["udp:127.0.0.1:{sip}"]
[http]
listen = "127.0.0.1:{http}"
admin_token = "bench-admin-token"
session_rate_limit = 0
[store]
url = "sqlite:///./var/bench.db"
[log]
level = "warning"
[[carriers]]
name = "lo"
addresses = ["127.0.0.0/8"]
[[trackers]]
id = "bench"
public_key = "pk_bench"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070"]
reservation_ttl = "6m"
  [[trackers.pools]]
  name = "web"
  sources = ["*"]
  numbers = {numbers}
"""


async def load(base: str, total: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    sessions: list[str] = []
    queue = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def worker() -> None:
            for i in queue:
                body = {"tracker": "pk_bench", "client_id": f"GA1.2.{i}.1",
                        "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "bench"}
                if i % 10 == 9 and sessions:
                    body["session_id"] = sessions[i % len(sessions)]
                t0 = time.perf_counter()
                async with client.post(f"{base}/v1/sessions", json=body) as r:
                    data = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {data}")
                latencies.append(time.perf_counter() - t0)
                if len(sessions) < 1000:
                    sessions.append(data["session_id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=50)
    args = ap.parse_args()
    sip, http = free_port(), free_port()
    numbers = json.dumps([f"+7499100{i:04d}" for i in range(1000)])
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "c.toml").write_text(CONFIG.format(sip=sip, http=http, numbers=numbers))
        proc = subprocess.Popen([sys.executable, "-m", "calltrackd", "run", "--config", "c.toml"],
                                cwd=tmp, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            base = f"http://127.0.0.1:{http}"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", http), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            asyncio.run(load(base, 500, args.concurrency))  # warm-up
            cpu0 = _cpu(proc.pid)
            t0 = time.perf_counter()
            lat = asyncio.run(load(base, args.requests, args.concurrency))
            wall = time.perf_counter() - t0
            cpu = _cpu(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    lat.sort()
    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(f"POST /v1/sessions: {len(lat)} requests, concurrency {args.concurrency}")
    print(f"  {len(lat) / wall:8.0f} requests/s   daemon CPU {cpu / wall * 100:4.0f}% of a core")
    print(f"  latency ms: p50 {pct(0.5):.2f}  p90 {pct(0.9):.2f}  p99 {pct(0.99):.2f}  "
          f"max {lat[-1] * 1000:.2f}")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
