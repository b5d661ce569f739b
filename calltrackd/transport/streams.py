"""TCP and TLS connections: one protocol per connection, the table of them by peer, how
many a source may open and how long one stays open without traffic.

A connection is kept while it carries traffic, and while a transaction or a dialog needs
it (RFC 3261 §18: a server keeps a connection at least as long as the transactions on
it; a call's BYE goes back over the connection its INVITE came on). One that has carried
nothing for `idle_timeout` seconds and that nothing needs is closed, ours toward a target
as well as a peer's; until then a connection we opened is reused for everything to that
peer (RFC 5923's spirit). Each connection has one loop timer, pushed back lazily: it fires
once per `idle_timeout` at most and compares the time of the last byte with the clock.

Inbound connections are bounded per source host and in total; one over either bound is
closed as soon as it is accepted (over TLS: once its handshake is done, which asyncio
bounds to 10 s). Closes are counted by transport and reason, read at scrape time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import structlog

from ..sip.endpoint import Address
from ..sip.message import ParseError, StreamFramer

if TYPE_CHECKING:
    from ..config import SipSettings
    from .stack import SipStack

log = structlog.get_logger("calltrackd.sip")

CLOSE_REASONS = ("idle", "source_limit", "total_limit")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    idle_timeout: float = 300.0  # seconds without traffic; 0: never closed for it
    max_total: int = 1000  # inbound connections open at once; 0: no limit
    max_per_source: int = 32  # inbound connections from one host; 0: no limit

    @classmethod
    def of(cls, sip: SipSettings) -> ConnectionLimits:
        """From the `[sip]` settings."""
        return cls(sip.tcp_idle_timeout, sip.tcp_max_connections,
                   sip.tcp_max_connections_per_source)


class Loop(Protocol):
    """What the table asks of its loop (an asyncio loop; tests give a fake)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object],
                *args: object) -> asyncio.TimerHandle: ...


class Stream(asyncio.Protocol):
    """One TCP or TLS connection (asyncio does the TLS: what arrives here is plain).
    `peer` is given for a connection we open, and read from the socket for one accepted."""

    def __init__(self, stack: SipStack, kind: str, peer: Address | None = None) -> None:
        self.stack = stack
        self.kind = kind  # "tcp" | "tls"
        self.framer = StreamFramer(stack.layer.max_size)
        self.transport: asyncio.Transport | None = None
        self.inbound = peer is None
        self.peer = peer
        self.last = 0.0  # when the last byte went either way (the stack's clock)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = self.transport.get_extra_info("peername")[:2]
            host = str(host)
            self.peer = Address(self.kind, host[7:] if host.startswith("::ffff:") else host,
                                int(port))
        if not self.stack.conns.opened(self):
            self.transport.abort()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.last = self.stack.clock()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        stack = self.stack
        self.last = stack.clock()
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            # framing is lost on this connection: nothing after this can be trusted
            log.info("sip.framing_error", message="stream framing error, closing",
                     peer=str(self.peer), reason=exc.reason)
            if self.transport:
                self.transport.close()
            return
        for message in messages:
            verdict = stack.admit(self.peer.host)
            if verdict == "limited":
                # over its rate on a connection it opened: not worth keeping it open
                if self.transport:
                    self.transport.close()
                return
            stack.feed(message, self.peer, verdict == "stranger")

    def connection_lost(self, exc: Exception | None) -> None:
        self.stack.conns.lost(self)


class Connections:
    """The open connections by peer (transport, host, port), their bounds and idle timers.
    `in_use(peer)`: whether a transaction or a dialog still needs the connection."""

    def __init__(self, clock: Callable[[], float], loop: Callable[[], Loop],
                 in_use: Callable[[Address], bool],
                 limits: ConnectionLimits | None = None) -> None:
        self.clock = clock
        self.loop = loop
        self.in_use = in_use
        self.limits = limits or ConnectionLimits()
        self.by_peer: dict[Address, Stream] = {}
        self.inbound = 0
        self.per_host: dict[str, int] = {}  # inbound connections open, by source host
        self.closed: dict[tuple[str, str], int] = {}  # (transport, reason) → count

    def opened(self, stream: Stream) -> bool:
        """A connection is up: False if it is over a bound (the caller drops it)."""
        peer = stream.peer
        assert peer is not None
        limits = self.limits
        if stream.inbound:
            count = self.per_host.get(peer.host, 0)
            reason = None
            if limits.max_total and self.inbound >= limits.max_total:
                reason = "total_limit"
            elif limits.max_per_source and count >= limits.max_per_source:
                reason = "source_limit"
            if reason is not None:
                self._count(peer.transport, reason)
                log.warning("sip.connection_refused", peer=str(peer), reason=reason,
                            open_from_source=count, open_inbound=self.inbound)
                stream.peer = None  # never in the table: connection_lost has nothing to undo
                return False
            self.inbound += 1
            self.per_host[peer.host] = count + 1
        old = self.by_peer.get(peer)
        if old is not None and old is not stream and old.transport is not None:
            old.transport.close()  # the same peer again (a port reused): the newer wins
        self.by_peer[peer] = stream
        stream.last = self.clock()
        self._arm(stream, stream.last + limits.idle_timeout)
        return True

    def lost(self, stream: Stream) -> None:
        peer = stream.peer
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if peer is None:
            return
        if self.by_peer.get(peer) is stream:
            del self.by_peer[peer]
        if stream.inbound:
            stream.inbound = False  # counted down once
            self.inbound -= 1
            left = self.per_host.get(peer.host, 1) - 1
            if left > 0:
                self.per_host[peer.host] = left
            else:
                self.per_host.pop(peer.host, None)

    def check(self, stream: Stream) -> None:
        """The idle timer fired: close the connection, or look again later."""
        stream.timer = None
        transport = stream.transport
        peer = stream.peer
        if transport is None or transport.is_closing() or peer is None:
            return
        timeout = self.limits.idle_timeout
        now = self.clock()
        if timeout <= 0:
            return  # turned off by a reload: left open, as before
        due = stream.last + timeout
        if due > now:
            self._arm(stream, due)  # traffic since: look again then
        elif self.in_use(peer):
            self._arm(stream, now + timeout)
        else:
            self._count(peer.transport, "idle")
            log.info("sip.connection_idle", message="idle connection closed", peer=str(peer),
                     inbound=stream.inbound, idle_seconds=round(now - stream.last, 1))
            transport.close()

    def close_all(self) -> None:
        for stream in list(self.by_peer.values()):
            if stream.transport:
                stream.transport.close()

    def _arm(self, stream: Stream, at: float) -> None:
        if self.limits.idle_timeout <= 0:
            return
        loop = self.loop()
        stream.timer = loop.call_at(loop.time() + max(0.0, at - self.clock()),
                                    self.check, stream)

    def _count(self, transport: str, reason: str) -> None:
        key = (transport, reason)
        self.closed[key] = self.closed.get(key, 0) + 1
