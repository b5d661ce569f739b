"""systemd's notify protocol (sd_notify(3)) without a compiled dependency.

READY=1 once SIP and HTTP listen, STOPPING=1 when the drain starts, WATCHDOG=1 every
half of WATCHDOG_USEC while the event loop turns. A no-op outside systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("calltrackd.systemd")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        if self.address:
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]  # abstract namespace
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or not self.address:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", message="sd_notify failed", error=str(exc))

    def watchdog_interval(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2

    async def run_watchdog(self, stop: asyncio.Event) -> None:
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while not stop.is_set():
            self.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
