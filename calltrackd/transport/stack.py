"""asyncio around the sans-I/O transaction layer: sockets, one timer, dispatch.

UDP, TCP and TLS listeners (IPv4 and IPv6), outgoing TCP and TLS connections reused per
peer (one per transport, address and port), and the layer's single timer re-armed with
`loop.call_at` after every input. The transaction user (the B2BUA engine) receives the
layer's events through `on_events`. TLS contexts and names: tls.py; the connections, their
bounds and idle timeout: streams.py.

With a `StrangerGate` (strangers.py), what carriers and peers send is handled as it is
read; a stranger's datagram that its token buckets admit waits in a short queue of its
own, served a few per loop turn, so under a flood the calls' messages go first. A
datagram the buckets refuse is dropped unread.

A connection that cannot be opened (refused, timed out, a TLS handshake or certificate
that fails) answers each request waiting for it with a 503 of our own, as RFC 3261
§8.1.3.1 asks of a transport error, so the caller fails over at once instead of after
Timer B.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import itertools
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import structlog

from ..sip.endpoint import Address, Event, TransactionLayer
from ..sip.message import ParseError, Request, parse_message, response_for
from . import bpf
from .probe import PROBE_MARK, QueueDelayProbe
from .strangers import StrangerGate
from .streams import ConnectionLimits, Connections, Stream
from .tls import TlsContexts, server_name

log = structlog.get_logger("calltrackd.sip")

EventSink = Callable[[list[Event]], None]
Tap = Callable[[str, bytes], None]  # direction ("in" | "out"), datagram — metrics and traces


@dataclass(frozen=True, slots=True)
class Listen:
    transport: str  # udp | tcp | tls
    host: str
    port: int


@functools.lru_cache(maxsize=4096)
def is_ipv6(host: str) -> bool:
    """Is this address literal IPv6 (cached: asked for every datagram sent)?"""
    try:
        return isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address)
    except ValueError:
        return False


UDP_BUFFER = 4 * 1024 * 1024


def _grow_buffers(sock: socket.socket) -> None:
    """A burst of datagrams must wait in the kernel, not be dropped, while the loop
    finishes what it is doing (the load shedder keeps that wait short). The kernel caps
    SO_RCVBUF at net.core.rmem_max; SO_RCVBUFFORCE passes the cap when we may."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for opt in (force, plain):
            if opt is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
                break
            except OSError:
                continue


# datagrams sent when they are ready instead of at the end of the loop turn (see send_raw)
_SEND_AT_ONCE = (b"SIP/2.0 100 ", b"INVITE ")
STRANGER_QUEUE = 256  # strangers' datagrams admitted and waiting; more are dropped
STRANGERS_PER_TURN = 8  # served per loop turn, after what carriers and peers sent


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, stack: SipStack) -> None:
        self.stack = stack
        self.transport: asyncio.DatagramTransport | None = None
        self.probe: QueueDelayProbe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        stack = self.stack
        blocked = stack.blocked
        if blocked:
            key = cast(str, addr[0])
            until = blocked.get(key)
            if until is not None:
                if stack.clock() < until:  # a stranger over its rate: not even read
                    stack.counts["rate_limited"] += 1
                    return
                del blocked[key]
        if data and data[0] == PROBE_MARK and self.probe is not None \
                and self.probe.received(data, stack.clock()):
            return
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        self.stack.datagram(data, Address("udp", host, int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction's timers handle it
        log.debug("sip.udp_error", error=str(exc))


class SipStack:
    """Owns sockets and the timer; feeds the layer and flushes what it wants sent."""

    def __init__(
        self,
        layer: TransactionLayer,
        *,
        advertise: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsContexts | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.layer = layer
        self.tls = tls  # needed for tls: listeners and for connections to TLS targets
        # the URIs of the configured targets: which name a TLS connection verifies
        self.tls_targets: Callable[[], Sequence[str]] = lambda: ()
        # a name to verify for a TLS connection to an address, set by whoever resolved it
        self.tls_names: dict[tuple[str, int], str] = {}
        self.advertise = advertise
        self.clock = clock
        self.on_events: EventSink = lambda events: None
        self.taps: list[Tap] = []
        self._udp: dict[int, _Udp] = {}  # address family → protocol
        self._tcp_servers: list[asyncio.AbstractServer] = []  # TCP and TLS
        # TCP and TLS connections by peer, their bounds and idle timers (streams.py); the
        # addresses calls and dialogs still send to keep theirs open (set by the app)
        self.connection_users: Callable[[], Iterable[Address]] = lambda: ()
        self.conns = Connections(clock, lambda: self.loop, self._connection_in_use, limits)
        self._users: set[Address] = set()  # see _connection_in_use
        self._users_at: float | None = None
        self._pending: dict[Address, list[bytes]] = {}  # waiting for a connection
        self._refused: Address | None = None  # while its waiting requests get their 503
        self._listen: list[Listen] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._local_ip_cache: dict[tuple[str, int], str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_socks: list[socket.socket] = []
        self.queue_probes: list[QueueDelayProbe] = []  # one per UDP socket, for the shedder
        # datagrams queued in this loop turn, sent together at its end (see _send_udp)
        self._udp_out: list[tuple[asyncio.DatagramTransport, bytes, tuple[str, int]]] = []
        self.gate: StrangerGate | None = None  # see use_gate
        self.blocked: dict[str, float] = {}  # the gate's, once there is one
        self.counts: dict[str, int] = {}
        self._strangers: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._failures: dict[str, float] = {}  # where an input failed → when last logged
        self._kernel_timer: asyncio.TimerHandle | None = None
        self._own_hosts: set[str] = set()  # our listening and probing addresses

    def use_gate(self, gate: StrangerGate) -> None:
        """Screen strangers' messages (before parsing, and their requests after)."""
        self.gate = gate
        self.layer.screen = gate.screen
        self.blocked = gate.blocked
        self.counts = gate.counts

    def _kernel_filter(self) -> None:
        """Give the kernel the gate's list of sources to drop (IPv4 sockets only)."""
        gate = self.gate
        if gate is None:
            return
        gate.kernel_changed = False
        proto = self._udp.get(socket.AF_INET)
        sock = proto.transport.get_extra_info("socket") if proto and proto.transport else None
        if sock is None:
            gate.kernel.clear()  # no IPv4 socket to filter: the buckets do it all
            return
        for own in self._own_hosts & gate.kernel.keys():
            del gate.kernel[own]  # our own address, spoofed: never the queue probe's
        gate.never_kernel |= self._own_hosts
        hosts = sorted(gate.kernel)
        try:
            bpf.drop_sources(sock, hosts)
        except OSError as exc:
            gate.kernel.clear()
            gate.never_kernel.update(hosts)  # not again for these
            log.warning("sip.kernel_drop_unavailable",
                        message="cannot drop strangers in the kernel", error=str(exc))
            return
        if hosts:
            log.warning("sip.strangers_flooding",
                        message="strangers flooding: their datagrams dropped by the kernel",
                        sources=hosts[:20], count=len(hosts))
            if self._kernel_timer is None:
                self._kernel_timer = self.loop.call_later(1.0, self._expire_kernel)

    def _expire_kernel(self) -> None:
        self._kernel_timer = None
        gate = self.gate
        if gate is None:
            return
        gate.expire_kernel(self.clock())
        if gate.kernel_changed:
            self._kernel_filter()
        if gate.kernel and self._kernel_timer is None:
            self._kernel_timer = self.loop.call_later(1.0, self._expire_kernel)
    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, listen: Sequence[Listen]) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for spec in listen:
            family = socket.AF_INET6 if is_ipv6(spec.host) else socket.AF_INET
            if spec.transport == "udp":
                _, proto = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(spec.host, spec.port), family=family
                )
                self._udp.setdefault(family, proto)
                sock = proto.transport.get_extra_info("socket") if proto.transport else None
                if sock is not None:
                    _grow_buffers(sock)
                    self._add_probe(proto, sock, family)
                port = sock.getsockname()[1] if sock else spec.port
            elif spec.transport in ("tcp", "tls"):
                kind = spec.transport
                tls = self.tls.listener if self.tls is not None and kind == "tls" else None
                if kind == "tls" and tls is None:
                    raise ValueError("a tls listener needs [sip.tls] cert and key")
                server = await loop.create_server(
                    functools.partial(Stream, self, kind), host=spec.host, port=spec.port,
                    family=family, reuse_address=True, ssl=tls,
                    ssl_handshake_timeout=10.0 if tls else None,
                )
                self._tcp_servers.append(server)
                port = server.sockets[0].getsockname()[1]
            else:
                raise ValueError(f"transport {spec.transport} is not supported yet")
            self._listen.append(Listen(spec.transport, spec.host, port))

    def _add_probe(self, proto: _Udp, sock: socket.socket, family: int) -> None:
        """A queue-delay probe for this socket, sent from a socket of our own."""
        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self._own_hosts.add(host)
        try:
            sender = socket.socket(family, socket.SOCK_DGRAM)
            sender.setblocking(False)
        except OSError as exc:
            log.warning("sip.no_queue_probe", message="no queue-delay probe", error=str(exc))
            return
        self._probe_socks.append(sender)

        def send(data: bytes) -> None:
            sender.sendto(data, (host, port))

        proto.probe = QueueDelayProbe(send)
        self.queue_probes.append(proto.probe)

    def stop_listening(self) -> None:
        """Stop accepting TCP and TLS connections; UDP stays open for running calls."""
        for server in self._tcp_servers:
            server.close()

    async def close(self) -> None:
        self._send_udp()
        if self._timer:
            self._timer.cancel()
        if self._kernel_timer:
            self._kernel_timer.cancel()
        for server in self._tcp_servers:
            server.close()
        self.conns.close_all()
        for proto in self._udp.values():
            if proto.transport:
                proto.transport.close()
        self._udp.clear()
        for sender in self._probe_socks:
            sender.close()
        self._probe_socks.clear()
        self.queue_probes.clear()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the stack runs on (kept: asking asyncio costs a getpid() on 3.11)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def listening(self) -> list[Listen]:
        return list(self._listen)

    # -- input -------------------------------------------------------------------------

    def admit(self, host: str) -> str:
        """"trusted", "stranger" or "limited" (see StrangerGate.admit); all trusted
        without a gate."""
        gate = self.gate
        if gate is None:
            return "trusted"
        verdict = gate.admit(host, self.clock())
        if gate.kernel_changed:
            self._kernel_filter()
        return verdict

    def datagram(self, data: bytes, source: Address) -> None:
        verdict = self.admit(source.host)
        if verdict == "trusted":
            self.feed(data, source)
        elif verdict == "stranger":
            queue = self._strangers
            if len(queue) >= STRANGER_QUEUE:
                assert self.gate is not None
                self.gate.counts["rate_limited"] += 1
                return
            if not queue:
                self.loop.call_soon(self._serve_strangers)
            queue.append((data, source))

    def _serve_strangers(self) -> None:
        queue = self._strangers
        for _ in range(min(STRANGERS_PER_TURN, len(queue))):
            data, source = queue.popleft()
            self.feed(data, source, True)
        if queue:
            self.loop.call_soon(self._serve_strangers)

    def feed(self, data: bytes, source: Address, stranger: bool = False) -> None:
        for tap in self.taps:
            tap("in", data)
        try:
            events = self.layer.receive(data, source, self.clock(), stranger)
        except Exception as exc:  # a bug: one line for it, never the loop's traceback
            self._failed(exc, source)
            events = []
        if events:
            self.on_events(events)
        self.flush()
        gate = self.gate
        if gate is not None and gate.notices:
            for notice in gate.take_notices():
                log.info("sip.stranger_request", source=notice.source,
                         method=notice.method, action=notice.action,
                         note="logged once a minute per source; counted in "
                              "calltrackd_sip_stranger_packets_total")

    def _failed(self, exc: Exception, source: Address) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" \
            if frames else "?"
        now = self.clock()
        if now - self._failures.get(where, -60.0) < 60.0:
            return
        if len(self._failures) < 1000:
            self._failures[where] = now
        log.error("sip.handling_failed", source=str(source), where=where,
                  error=f"{type(exc).__name__}: {exc}"[:200])

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.layer.handle_timer(self.clock())
        if events:
            self.on_events(events)
        self.flush()

    # -- output ------------------------------------------------------------------------

    def flush(self) -> None:
        for data, dest in self.layer.transmits():
            self.send_raw(data, dest)
        self._arm()

    def _arm(self) -> None:
        at = self.layer.get_timer()
        if at is None or at == self._timer_at:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= at:
                return  # the armed timer fires first and re-arms after
            self._timer.cancel()
        loop = self.loop
        delay = max(0.0, at - self.clock())
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._timer_at = at

    def _send_udp(self) -> None:
        """Send the datagrams of this loop turn together. A datagram to a peer that sleeps
        costs a wake-up (on this VM ~25 us of our time, more than all else we do per
        message); back to back, the first wakes the peer and the rest find it running."""
        out, self._udp_out = self._udp_out, []
        for transport, data, addr in out:
            if not transport.is_closing():
                transport.sendto(data, addr)

    def send_raw(self, data: bytes, dest: Address) -> None:
        for tap in self.taps:
            tap("out", data)
        gate = self.gate
        if gate is not None and not data.startswith(b"SIP/2.0 "):
            gate.peer(dest.host.strip("[]"), self.clock())  # a request: a peer
            if gate.kernel_changed:
                self._kernel_filter()
        if dest.transport == "udp":
            family = socket.AF_INET6 if is_ipv6(dest.host) else socket.AF_INET
            proto = self._udp.get(family)
            if proto is None or proto.transport is None:
                log.warning("sip.no_udp_socket", message="no udp socket for destination",
                            dest=str(dest))
                return
            addr = (dest.host.strip("[]"), dest.port)
            if data.startswith(_SEND_AT_ONCE):
                # a new call's first answer (100 Trying) and the INVITE we forward: their
                # wait is the call's set-up time, and a turn of the loop under load lasts
                # milliseconds. What this turn queued before them goes first (order per
                # peer is kept); one wake-up per call is cheap next to that wait.
                if self._udp_out:
                    self._send_udp()
                if not proto.transport.is_closing():
                    proto.transport.sendto(data, addr)
                return
            if not self._udp_out:
                self.loop.call_soon(self._send_udp)
            self._udp_out.append((proto.transport, data, addr))
            return
        key = Address(dest.transport, dest.host.strip("[]"), dest.port)
        if key == self._refused and data.startswith(b"ACK "):
            return  # the ACK of our own 503: not worth a second failing connection
        conn = self.conns.by_peer.get(key)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.write(data)
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(data)
            return
        self._pending[key] = [data]
        loop = self.loop
        loop.create_task(self._connect(key))

    async def _connect(self, key: Address) -> None:
        loop = self.loop
        kind, host, port = key
        name = host
        try:
            if kind == "tls":
                if self.tls is None:
                    raise OSError("no [sip.tls] contexts for a TLS target")
                name = self.tls_names.get((host, port)) or await server_name(
                    host, port, self.tls_targets())
                connect = loop.create_connection(
                    functools.partial(Stream, self, kind, key), host, port,
                    ssl=self.tls.client, server_hostname=name, ssl_handshake_timeout=10.0)
            else:
                connect = loop.create_connection(
                    functools.partial(Stream, self, kind, key), host, port)
            _, proto = await asyncio.wait_for(connect, 15.0 if kind == "tls" else 5.0)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("sip.connect_failed", message=f"{kind} connect failed",
                        dest=f"{kind}:{host}:{port}", server_name=name if kind == "tls" else None,
                        error=str(exc) or type(exc).__name__)
            self._unreachable(key, self._pending.pop(key, []))
            return
        for data in self._pending.pop(key, []):
            if proto.transport is not None and not proto.transport.is_closing():
                proto.write(data)

    def _unreachable(self, dest: Address, waiting: list[bytes]) -> None:
        """A transport error for each request that waited (RFC 3261 §8.1.3.1): its
        client transaction gets a 503 as though the next hop had sent it."""
        now = self.clock()
        events: list[Event] = []
        self._refused = dest
        for data in waiting:
            try:
                msg = parse_message(data, stream=True)
            except ParseError:
                continue
            if not isinstance(msg, Request) or msg.method == "ACK":
                continue
            answer = response_for(msg, 503, "Service Unavailable").to_bytes()
            try:
                events += self.layer.receive(answer, dest, now)
            except Exception as exc:  # a bug: one line for it, never the loop's traceback
                self._failed(exc, dest)
        try:
            if events:
                self.on_events(events)
            self.flush()
        finally:
            self._refused = None

    def _connection_in_use(self, peer: Address) -> bool:
        """Whether a transaction sends to `peer`, or a call or dialog would (streams.py).
        Asked only of a connection idle for the whole timeout; the addresses are gathered
        at most once a second for all such connections (a connection a call started to
        use since carried that call's first message, so it is not idle)."""
        now = self.clock()
        if self._users_at is None or now - self._users_at >= 1.0:
            self._users = {Address(a.transport, a.host.strip("[]"), a.port) for a in
                           itertools.chain(self.layer.destinations(), self.connection_users())}
            self._users_at = now
        return peer in self._users

    # -- our own addresses -------------------------------------------------------------

    def local_hostport(self, transport: str, toward: str) -> tuple[str, int]:
        """The host:port to write into Via/Contact for messages sent toward `toward`."""
        v6 = is_ipv6(toward)
        port = 5061 if transport == "tls" else 5060
        host = ""
        for spec in self._listen:
            if spec.transport == transport and is_ipv6(spec.host) == v6:
                host, port = spec.host, spec.port
                break
        else:
            for spec in self._listen:
                if spec.transport == transport:
                    host, port = spec.host, spec.port
                    break
        if self.advertise:
            return self.advertise, port
        if host in ("0.0.0.0", "::", ""):
            host = self._route_ip(toward, v6)
        return (f"[{host}]" if ":" in host else host), port

    def _route_ip(self, toward: str, v6: bool) -> str:
        key = (toward, 6 if v6 else 4)
        cached = self._local_ip_cache.get(key)
        if cached:
            return cached
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((toward.strip("[]"), 9))  # no packet is sent for a UDP connect
                ip = str(s.getsockname()[0])
        except OSError:
            ip = "::1" if v6 else "127.0.0.1"
        self._local_ip_cache[key] = ip
        return ip
