"""A stranger flooding the daemon: a raw UDP socket on another loopback address sending
INVITEs (each with a Call-ID, branch and From tag of its own) as fast as a Python loop
can, or at a given rate, and counting what comes back to it.

Used by tests/integration/test_strangers.py and tests/bench/flood.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

STRANGER_HOST = "127.0.0.2"

INVITE = (
    "INVITE sip:{did}@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {host}:{src};branch=z9hG4bKflood{n};rport\r\n"
    "From: <sip:+79160000000@{host}>;tag=fl{n}\r\n"
    "To: <sip:{did}@127.0.0.1>\r\n"
    "Call-ID: flood-{n}@{host}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:flood@{host}:{src}>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
SDP = ("v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Flood:
    """Sends until `stop()` or `seconds` have passed; `rate` None: as fast as it can."""

    def __init__(self, port: int, did: str, *, rate: float | None = None,
                 seconds: float = 20.0, host: str = STRANGER_HOST) -> None:
        self.port = port
        self.did = did
        self.rate = rate
        self.seconds = seconds
        self.host = host
        self.sent = 0
        self.received = 0
        self.statuses: Counter[str] = Counter()  # first line's status of what came back
        self.call_ids: Counter[str] = Counter()  # responses per Call-ID
        self.elapsed = 0.0
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.src = self.sock.getsockname()[1]
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._receiver = threading.Thread(target=self._receive, daemon=True)

    def message(self, n: int) -> bytes:
        sdp = SDP.format(host=self.host)
        return INVITE.format(did=self.did, port=self.port, host=self.host, src=self.src, n=n,
                             length=len(sdp), sdp=sdp).encode()

    def start(self) -> Flood:
        self._receiver.start()
        self._sender.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sender.join(30)

    def wait(self) -> None:
        self._sender.join(self.seconds + 30)

    def close(self, linger: float = 2.0) -> None:
        """Stop sending; keep listening `linger` s more for late answers (retransmissions)."""
        self.stop()
        time.sleep(linger)
        self.sock.close()
        self._receiver.join(5)

    @property
    def sent_rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    def _send(self) -> None:
        sock, dest = self.sock, ("127.0.0.1", self.port)
        # each INVITE differs in its branch, From tag and Call-ID: one replace builds it
        mark = b"1000000000"
        template = self.message(int(mark))
        started = time.monotonic()
        deadline = started + self.seconds
        n = 0
        while not self._stop.is_set():
            for _ in range(200):
                n += 1
                try:
                    sock.sendto(template.replace(mark, str(n).encode()), dest)
                except OSError:
                    pass  # a full send buffer: the kernel is the limit, keep going
            self.sent = n
            now = time.monotonic()
            if now >= deadline:
                break
            if self.rate is not None:
                ahead = n / self.rate - (now - started)
                if ahead > 0:
                    time.sleep(ahead)
        self.elapsed = time.monotonic() - started

    def _receive(self) -> None:
        self.sock.settimeout(0.5)
        while True:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue  # until close() closes the socket
            except OSError:
                return  # closed
            self.received += 1
            first = data.split(b"\r\n", 1)[0].decode(errors="replace")
            self.statuses[" ".join(first.split(" ")[:2])] += 1
            for line in data.split(b"\r\n"):
                if line.lower().startswith(b"call-id:"):
                    self.call_ids[line[8:].strip().decode(errors="replace")] += 1
