"""A probe of the time datagrams wait in a UDP socket's receive queue (see overload.py).

A saturated loop hides its backlog in the kernel: the socket's receive queue. A datagram
sent to our own socket, stamped with the time, leaves that queue after everything that
was in front of it; its age on arrival is the queueing delay an INVITE sees.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

PROBE_MARK = 0  # first byte of a probe datagram; never the first byte of a SIP message
_PROBE = struct.Struct("!B8sQd")  # mark, token, sequence, monotonic send time


class QueueDelayProbe:
    """Measures how long datagrams wait in one socket's receive queue.

    Sans-I/O apart from the `send` callable it is given: `tick(now)` sends a probe when
    none is out and returns the current delay estimate; `received(data, now)` takes a
    probe back. One probe is out at a time, so a deep queue is not filled with probes.
    The token (random per process) keeps datagrams from elsewhere from posing as probes.
    """

    def __init__(self, send: Callable[[bytes], None], *, lost_after: float = 2.0) -> None:
        self._send = send
        self._token = os.urandom(8)
        self._seq = 0
        self._sent_at: float | None = None
        self.lost_after = lost_after
        self.delay = 0.0  # the last probe's time in the queue, seconds
        self.lost = 0

    def tick(self, now: float) -> float:
        if self._sent_at is None:
            self._seq += 1
            self._sent_at = now
            try:
                self._send(_PROBE.pack(PROBE_MARK, self._token, self._seq, now))
            except OSError:
                pass  # a full buffer: counted as lost below, which is what it means
            return self.delay
        age = now - self._sent_at
        if age > self.lost_after:  # dropped (a full receive buffer): as bad as its age
            self.lost += 1
            self._sent_at = None
            self.delay = age
        return max(self.delay, age)

    def received(self, data: bytes, now: float) -> bool:
        """Is this datagram our probe? (If so it has been accounted for.)"""
        if len(data) != _PROBE.size:
            return False
        _, token, seq, sent = _PROBE.unpack(data)
        if token != self._token:
            return False
        if seq == self._seq and self._sent_at is not None:
            self.delay = max(0.0, now - sent)
            self._sent_at = None
        return True
