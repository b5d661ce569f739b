"""An asyncio client of rtpengine's ng control protocol (UDP).

A request is `<cookie> <bencoded dict>` in one datagram; the reply carries the same
cookie. A request not answered within `retransmit` is sent again with the same cookie
(rtpengine answers a repeated cookie from its cache, so a retransmitted `offer` never
makes a second call), at most `tries` times per instance.

Several instances: the one for a call is chosen by rendezvous hashing of its call id, so
every node picks the same instance for a call and a dead instance moves only its own
share. An instance that does not answer (or whose port is closed: the connected socket
reports ICMP port unreachable at once) is marked dead, skipped by new calls and tried
again after `recheck`. A call stays on the instance its `offer` went to: only that one
knows the call, so `answer`, `delete` and `query` go there.

The budget: every command gets its reply or an `NgError` within `timeout` seconds,
whatever the instances do, so a slow rtpengine never holds a call (the engine can go on
with the media direct). Nothing here touches SIP; the engine passes SDP in and out.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import bencode

__all__ = [
    "CallStats",
    "NgClient",
    "NgError",
    "NgRejected",
    "NgTimeout",
    "NgUnavailable",
    "OfferOptions",
    "SdpResult",
]


class NgError(Exception):
    """A command that got no usable answer; `kind` names why (for metrics and logs)."""

    kind = "error"

    def __init__(self, message: str, *, command: str = "", instance: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.instance = instance


class NgTimeout(NgError):
    """No reply within the retransmissions or the budget."""

    kind = "timeout"


class NgUnavailable(NgError):
    """No instance could be asked: all are marked dead, or the port was closed."""

    kind = "unavailable"


class NgRejected(NgError):
    """rtpengine answered `result: error` (the request itself was refused)."""

    kind = "rejected"


@dataclass(frozen=True, slots=True)
class OfferOptions:
    """What every offer and answer passes besides the SDP (from `[media]`)."""

    direction: tuple[str, ...] = ()  # two interface names: the sender's, the receiver's
    ice: str | None = "remove"
    flags: tuple[str, ...] = ()
    replace: tuple[str, ...] = ("origin", "session connection")


@dataclass(frozen=True, slots=True)
class SdpResult:
    """The SDP rewritten by rtpengine, to send on instead of the one given."""

    sdp: str
    instance: str
    warning: str | None = None
    recordings: tuple[str, ...] = ()  # pcap files rtpengine writes for this call


@dataclass(frozen=True, slots=True)
class CallStats:
    """A call as `query` (and `delete`) report it. Times are UNIX seconds."""

    instance: str
    created: float | None = None
    last_signal: float | None = None
    rtp_packets: int = 0
    rtp_bytes: int = 0
    rtp_errors: int = 0
    rtcp_packets: int = 0
    # per SIP tag: when rtpengine last received an RTP packet from that side
    last_rtp: Mapping[str, float] = field(default_factory=dict)
    warning: str | None = None


@dataclass(eq=False)
class _Instance:
    name: str
    host: str
    port: int
    key: bytes
    transport: asyncio.DatagramTransport | None = None
    pending: dict[bytes, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    dead_until: float = 0.0
    opening: asyncio.Future[None] | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, inst: _Instance) -> None:
        self.inst = inst

    def datagram_received(self, data: bytes, addr: Any) -> None:
        cookie, sep, body = data.partition(b" ")
        fut = self.inst.pending.get(cookie)
        if not sep or fut is None or fut.done():
            return  # a late reply to a request given up, or junk
        try:
            reply = bencode.decode(body, text=True)
        except bencode.BencodeError as exc:
            fut.set_exception(NgError(f"malformed reply: {exc}"))
            return
        if not isinstance(reply, dict):
            fut.set_exception(NgError("malformed reply: not a dictionary"))
            return
        fut.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on the connected socket: nobody listens there now
        for fut in self.inst.pending.values():
            if not fut.done():
                fut.set_exception(NgUnavailable(f"{type(exc).__name__}: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.inst.transport = None


ErrorHook = Callable[[str, str, str], None]  # (instance, command, kind)


class NgClient:
    def __init__(self, instances: Sequence[tuple[str, int]], *, timeout: float = 1.0,
                 retransmit: float = 0.25, tries: int = 3, recheck: float = 10.0,
                 options: OfferOptions | None = None, on_error: ErrorHook | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not instances:
            raise ValueError("NgClient needs at least one rtpengine instance")
        self.timeout = timeout
        self.retransmit = retransmit
        self.tries = max(1, tries)
        self.recheck = recheck
        self.options = options or OfferOptions()
        self.on_error = on_error
        self._clock = clock
        self._instances = [
            _Instance(_name(h, p), h, p, _name(h, p).encode()) for h, p in instances]
        self._by_name = {i.name: i for i in self._instances}
        self._pinned: dict[str, _Instance] = {}
        self._cookies = itertools.count(1)
        self._prefix = b"%x_" % os.getpid()
        self._closed = False

    @property
    def instances(self) -> list[str]:
        return [i.name for i in self._instances]

    def alive(self, name: str) -> bool:
        return self._by_name[name].dead_until <= self._clock()

    def close(self) -> None:
        self._closed = True
        for inst in self._instances:
            for fut in inst.pending.values():
                if not fut.done():
                    fut.set_exception(NgUnavailable("client closed"))
            if inst.transport is not None:
                inst.transport.close()
                inst.transport = None

    # -- commands ------------------------------------------------------------------

    async def offer(self, call_id: str, from_tag: str, sdp: str, *, record: bool = False,
                    metadata: str | None = None, extra: Mapping[str, Any] | None = None
                    ) -> SdpResult:
        """The caller's SDP → the SDP to send to the callee. Chooses the call's instance."""
        request = self._media_request("offer", call_id, from_tag, sdp)
        if self.options.direction:
            request["direction"] = list(self.options.direction)
        if record:
            request["record call"] = "yes"
        if metadata is not None:
            request["metadata"] = metadata
        request["supports"] = ["load limit"]
        request.update(extra or {})
        pinned = self._pinned.get(call_id)
        reply, inst = await (self._call(request, [pinned], skip_dead=False) if pinned
                             else self._call(request, self._ranked(call_id)))
        self._pin(call_id, inst)
        return _sdp_result(reply, inst.name, "offer")

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, *,
                     extra: Mapping[str, Any] | None = None) -> SdpResult:
        """The callee's SDP → the SDP to send to the caller."""
        request = self._media_request("answer", call_id, from_tag, sdp)
        request["to-tag"] = to_tag
        request.update(extra or {})
        reply, inst = await self._call(request, self._home(call_id), skip_dead=False)
        return _sdp_result(reply, inst.name, "answer")

    async def delete(self, call_id: str, from_tag: str | None = None,
                     to_tag: str | None = None, *, delay: int | None = 0) -> CallStats:
        """Ends the call in rtpengine (and closes its recording). `delay=None` keeps
        rtpengine's `delete-delay`; 0 (the default) ends it now."""
        request: dict[str, Any] = {"command": "delete", "call-id": call_id}
        if from_tag is not None:
            request["from-tag"] = from_tag
        if to_tag is not None:
            request["to-tag"] = to_tag
        if delay is not None:
            request["delete delay"] = delay
        try:
            reply, inst = await self._call(request, self._home(call_id), skip_dead=False)
        finally:
            self._pinned.pop(call_id, None)
        return _stats(reply, inst.name)

    async def query(self, call_id: str) -> CallStats:
        reply, inst = await self._call({"command": "query", "call-id": call_id},
                                       self._home(call_id), skip_dead=False)
        return _stats(reply, inst.name)

    async def ping(self, instance: str) -> float:
        """Round-trip seconds of a `ping` to one instance (revives it when it answers)."""
        inst = self._by_name[instance]
        started = self._clock()
        reply, _ = await self._call({"command": "ping"}, [inst], skip_dead=False)
        if reply.get("result") != "pong":
            raise NgError(f"ping answered {reply.get('result')!r}", command="ping",
                          instance=instance)
        return self._clock() - started

    async def check(self) -> dict[str, str]:
        """Every instance pinged at once: name → "ok" or why not."""
        async def one(name: str) -> str:
            try:
                await self.ping(name)
            except NgError as exc:
                return f"{exc.kind}: {exc}"
            return "ok"

        results = await asyncio.gather(*(one(i.name) for i in self._instances))
        return dict(zip(self.instances, results, strict=True))

    # -- machinery -----------------------------------------------------------------

    def _media_request(self, command: str, call_id: str, from_tag: str, sdp: str
                       ) -> dict[str, Any]:
        request: dict[str, Any] = {"command": command, "call-id": call_id,
                                   "from-tag": from_tag, "sdp": sdp}
        o = self.options
        if o.flags:
            request["flags"] = list(o.flags)
        if o.replace:
            request["replace"] = list(o.replace)
        if o.ice:
            request["ICE"] = o.ice
        return request

    def _ranked(self, call_id: str) -> list[_Instance]:
        """Rendezvous hashing: every node ranks the instances alike for a call id."""
        key = call_id.encode("utf-8", "surrogateescape")
        return sorted(self._instances, reverse=True, key=lambda i: hashlib.blake2b(
            key, key=i.key[:64], digest_size=8).digest())

    def _home(self, call_id: str) -> list[_Instance]:
        """The instance that knows the call: the one its offer went to."""
        pinned = self._pinned.get(call_id)
        if pinned is not None:
            return [pinned]
        ranked = self._ranked(call_id)
        now = self._clock()
        return [next((i for i in ranked if i.dead_until <= now), ranked[0])]

    def _pin(self, call_id: str, inst: _Instance) -> None:
        pinned = self._pinned
        if call_id not in pinned and len(pinned) >= 500_000:  # calls never deleted
            del pinned[next(iter(pinned))]
        pinned[call_id] = inst

    async def _call(self, request: dict[str, Any], candidates: Iterable[_Instance], *,
                    skip_dead: bool = True) -> tuple[dict[str, Any], _Instance]:
        command = str(request["command"])
        if self._closed:
            raise NgUnavailable("client closed", command=command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        payload = bencode.encode(request)
        now = self._clock()
        live = [i for i in candidates if not skip_dead or i.dead_until <= now]
        if not live:
            raise NgUnavailable("every rtpengine instance failed lately (each is tried "
                                f"again {self.recheck:g}s after it failed)", command=command)
        last: NgError | None = None
        for inst in live:
            if loop.time() >= deadline:
                break
            try:
                reply = await self._exchange(loop, inst, payload, deadline)
            except NgError as exc:
                exc.command, exc.instance = command, inst.name
                self._failed(inst, exc)
                last = exc
                continue
            inst.dead_until = 0.0
            result = reply.get("result")
            if result == "error":
                reason = str(reply.get("error-reason", "no reason given"))
                self._report(inst.name, command, NgRejected.kind)
                raise NgRejected(reason, command=command, instance=inst.name)
            if result == "load limit":  # this one is full: the next may take the call
                last = NgRejected(f"load limit: {reply.get('message', '')}".strip(": "),
                                  command=command, instance=inst.name)
                self._report(inst.name, command, "load_limit")
                continue
            return reply, inst
        if last is None:
            last = NgTimeout(f"no answer within {self.timeout:g}s", command=command)
        raise last

    def _failed(self, inst: _Instance, exc: NgError) -> None:
        if isinstance(exc, NgTimeout | NgUnavailable):
            inst.dead_until = self._clock() + self.recheck
        self._report(inst.name, exc.command, exc.kind)

    def _report(self, instance: str, command: str, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(instance, command, kind)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, inst: _Instance,
                        payload: bytes, deadline: float) -> dict[str, Any]:
        transport = await self._transport(loop, inst)
        cookie = self._prefix + b"%d" % next(self._cookies)
        datagram = cookie + b" " + payload
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        inst.pending[cookie] = fut
        sends = 0
        timer: asyncio.TimerHandle | None = None

        def send() -> None:
            nonlocal sends, timer
            if fut.done():
                return
            if sends >= self.tries:
                fut.set_exception(NgTimeout(f"no answer to {sends} sends"))
                return
            sends += 1
            transport.sendto(datagram)
            timer = loop.call_at(min(loop.time() + self.retransmit, deadline), send)

        def expire() -> None:
            if not fut.done():
                fut.set_exception(NgTimeout(f"no answer within {self.timeout:g}s"))

        budget = loop.call_at(deadline, expire)
        try:
            send()
            return await fut
        finally:
            budget.cancel()
            if timer is not None:
                timer.cancel()
            inst.pending.pop(cookie, None)

    async def _transport(self, loop: asyncio.AbstractEventLoop, inst: _Instance
                         ) -> asyncio.DatagramTransport:
        while inst.transport is None:
            if inst.opening is not None:  # another command is opening it
                await asyncio.shield(inst.opening)
                continue
            inst.opening = loop.create_future()
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(inst), remote_addr=(inst.host, inst.port))
            except OSError as exc:
                raise NgUnavailable(f"cannot open a socket: {exc}") from None
            finally:
                inst.opening.set_result(None)
                inst.opening = None
            inst.transport = transport
        return inst.transport


def _name(host: str, port: int) -> str:
    return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _sdp_result(reply: dict[str, Any], instance: str, command: str) -> SdpResult:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str) or not sdp:
        raise NgError("reply without an SDP", command=command, instance=instance)
    recordings = reply.get("recordings")
    files = tuple(r for r in recordings if isinstance(r, str)) if isinstance(
        recordings, list) else ()
    return SdpResult(sdp, instance, _text(reply.get("warning")), files)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _count(d: object, *keys: str) -> int:
    for k in keys:
        if not isinstance(d, dict):
            return 0
        d = d.get(k)
    return d if isinstance(d, int) else 0


def _stats(reply: dict[str, Any], instance: str) -> CallStats:
    last_rtp: dict[str, float] = {}
    tags = reply.get("tags")
    for tag, info in (tags.items() if isinstance(tags, dict) else ()):
        medias = info.get("medias") if isinstance(info, dict) else None
        for media in medias if isinstance(medias, list) else ():
            streams = media.get("streams") if isinstance(media, dict) else None
            for stream in streams if isinstance(streams, list) else ():
                if not isinstance(stream, dict) or "RTP" not in (stream.get("flags") or ()):
                    continue
                if _count(stream, "stats", "packets") == 0:
                    continue
                seen = _number(stream.get("last packet"))
                if seen is not None:
                    last_rtp[tag] = max(seen, last_rtp.get(tag, 0.0))
    created = _number(reply.get("created"))
    created_us = _number(reply.get("created_us"))
    if created is not None and created_us is not None:
        created += created_us / 1e6
    return CallStats(
        instance=instance,
        created=created,
        last_signal=_number(reply.get("last signal")),
        rtp_packets=_count(reply, "totals", "RTP", "packets"),
        rtp_bytes=_count(reply, "totals", "RTP", "bytes"),
        rtp_errors=_count(reply, "totals", "RTP", "errors"),
        rtcp_packets=_count(reply, "totals", "RTCP", "packets"),
        last_rtp=last_rtp,
        warning=_text(reply.get("warning")),
    )
