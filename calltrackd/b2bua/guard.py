"""Who may speak in a dialog, and how often a refusal is worth a log line.

Pure helpers for the engine: address comparison that does not depend on how an address
was spelled (`[::1]`, `::1`, `0:0::1`), and a limiter that turns a flood of identical
events into one line per key and window with the count of lines left out.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass


@functools.lru_cache(maxsize=8192)
def canonical_host(host: str) -> str:
    """One spelling per IP address (IPv4-mapped IPv6 as IPv4); names stay as they are,
    lowercased."""
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return bare.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(slots=True)
class _Window:
    start: float
    lines: int
    suppressed: int


class LogLimiter:
    """At most `burst` lines per key in each `interval` seconds.

    `allow(key, now)` answers None when the line is to be left out (and counts it), else
    the number of lines left out for that key before this one (0 most of the time), which
    the caller writes into the line. `expired(now)` hands back the keys whose window ended
    with lines left out, so that a flood that stops is still reported once. At most
    `max_keys` keys are tracked (the keys come from the network); beyond that, every new
    key shares one window under `overflow_key`.
    """

    def __init__(self, interval: float, burst: int = 1, max_keys: int = 4096,
                 overflow_key: str = "*") -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        self.overflow_key = overflow_key
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str, now: float) -> int | None:
        windows = self._windows
        w = windows.get(key)
        if w is None and len(windows) >= self.max_keys:
            self._prune(now)
            if len(windows) >= self.max_keys:
                key = self.overflow_key
                w = windows.get(key)
        if w is None or now - w.start >= self.interval:
            left_out = w.suppressed if w is not None else 0
            windows[key] = _Window(now, 1, 0)
            return left_out
        if w.lines < self.burst:
            w.lines += 1
            return 0
        w.suppressed += 1
        return None

    def expired(self, now: float) -> list[tuple[str, int]]:
        """(key, lines left out) of every window that is over and left lines out; those
        windows are forgotten, as are finished windows that left nothing out."""
        out = []
        for key, w in list(self._windows.items()):
            if now - w.start >= self.interval:
                if w.suppressed:
                    out.append((key, w.suppressed))
                del self._windows[key]
        return out

    @property
    def pending(self) -> bool:
        """Whether some window holds lines left out that are not reported yet."""
        return any(w.suppressed for w in self._windows.values())

    def _prune(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if now - w.start >= self.interval and not w.suppressed:
                del self._windows[key]
