"""Strangers cost nothing: who may make the SIP core work, decided before and after parsing.

A *stranger* is a source that is none of: a carrier (`[[carriers]] addresses`, read live
so a reload applies), a `sip.trusted_sources` or `sip.trusted_proxies` network, or a
*peer* (an address we sent a
request to within `peer_ttl`: the PBXes calls were forwarded to, a carrier's Contact).

- Before parsing, a stranger's datagram takes a token from its source's bucket and from
  one bucket all strangers share (spoofed sources each get a bucket of their own, the
  shared one bounds them together); without one it is dropped unread (`rate_limited`).
- After parsing, a stranger's request is passed on only when it belongs to a dialog we
  have (an ACK or in-dialog request whose Call-ID and To tag name one of ours: a PBX
  answering from another address than it was sent to). Everything else gets the
  transport's policy: `drop` (nothing, the UDP default: no reflection), or `reject`:
  one stateless 403 (no transaction, so nothing is retransmitted; the TCP default, where
  sources cannot be spoofed). OPTIONS is answered 200 in `reject` mode, dropped in `drop`
  mode. A stranger's ACK is never answered. Responses need a client transaction anyway
  and go on to the layer, which drops strays.

Pure like the SIP core: the time is passed in; the transport owns sockets and queues.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..config import parse_ip
from ..http.ratelimit import RateLimiter
from ..sip.endpoint import Address
from ..sip.message import Request

if TYPE_CHECKING:
    from ..config import SipSettings

__all__ = ["ACTIONS", "Policy", "StrangerGate", "StrangerSettings", "Verdict"]

Policy = Literal["drop", "reject"]
Verdict = Literal["trusted", "stranger", "limited"]
# what was done with strangers' packets: the label of calltrackd_sip_stranger_packets_total
ACTIONS = ("rate_limited", "dropped", "rejected", "answered")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NOTICE_EVERY = 60.0  # seconds: one log line per stranger source at most this often
NOTICE_SOURCES = 100  # sources logged per NOTICE_EVERY at most (a spoofed flood has many)
# A source over its rate again and again (STRIKES times in STRIKE_WINDOW seconds: 0.2 s of
# a flood at rate 10/s) is handed to the kernel to drop (bpf.py) for KERNEL_BLOCK seconds;
# until then each of its datagrams costs a read and a dict lookup
STRIKES = 3
STRIKE_WINDOW = 10.0
KERNEL_BLOCK = 30.0
KERNEL_MAX = 200


@dataclass(frozen=True, slots=True)
class StrangerSettings:
    udp: Policy = "drop"
    tcp: Policy = "reject"
    rate: float = 10.0  # datagrams/s per stranger source, before parsing
    burst: int = 20
    total_rate: float = 200.0  # datagrams/s of all strangers together
    trusted: tuple[IPNetwork, ...] = ()
    peer_ttl: float = 4 * 3600.0 + 600.0  # the longest call and then some

    @classmethod
    def of(cls, sip: SipSettings) -> StrangerSettings:
        """From the `[sip]` settings."""
        return cls(udp=sip.stranger_policy, tcp=sip.stranger_policy_tcp,
                   rate=sip.stranger_rate, burst=sip.stranger_burst,
                   total_rate=sip.stranger_rate_total,
                   trusted=sip.trusted_sources + sip.trusted_proxies,
                   peer_ttl=sip.max_call_duration + 600.0)


@dataclass(frozen=True, slots=True)
class Notice:
    """A log line due: the first request from `source` in this minute met `action`."""

    source: str
    method: str
    action: str


class StrangerGate:
    def __init__(self, is_carrier: Callable[[str], bool],
                 in_dialog: Callable[[str, str], bool] = lambda call_id, tag: False,
                 settings: StrangerSettings | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.is_carrier = is_carrier
        self.in_dialog = in_dialog
        self.counts: dict[str, int] = counts if counts is not None else {}
        for action in ACTIONS:
            self.counts.setdefault(action, 0)
        self.notices: list[Notice] = []
        self._peers: dict[str, float] = {}  # address → when we last sent it a request
        self._trusted_cache: dict[str, bool] = {}
        self._noticed: set[str] = set()  # sources noticed in this minute
        # source → until when its bucket is empty: a flood's datagrams are dropped on one
        # dict lookup, before the transport builds anything for them (see stack.py)
        self.blocked: dict[str, float] = {}
        self.kernel: dict[str, float] = {}  # IPv4 source → until when the kernel drops it
        self.kernel_changed = False  # the transport re-attaches its filter when set
        self.never_kernel: set[str] = set()  # our own addresses (the queue probe's source)
        self._strikes: dict[str, int] = {}
        self._strike_window = 0.0
        self._notice_window = 0.0
        self.configure(settings or StrangerSettings())

    def configure(self, settings: StrangerSettings) -> None:
        """New settings (start-up, reload). The buckets start full again."""
        self.settings = settings
        self._per_source = RateLimiter(settings.rate * 60.0, settings.burst, 10_000)
        total_burst = max(1, int(settings.total_rate))  # one second's worth
        self._all = RateLimiter(settings.total_rate * 60.0, total_burst, 1)
        self._trusted_cache.clear()
        self.blocked.clear()
        if self.kernel:
            self.kernel.clear()
            self.kernel_changed = True

    # -- before parsing ----------------------------------------------------------------

    def admit(self, host: str, now: float) -> Verdict:
        """What a datagram (or stream message) from `host` is, before anything reads it."""
        if self.known(host, now):
            return "trusted"
        # both buckets must have a token; the shared one is asked only then, so one
        # source over its own rate does not use up the others' share
        rate = self.settings.rate
        if rate > 0 and not self._per_source.allow(host, now):
            self.counts["rate_limited"] += 1
            if len(self.blocked) >= 65_536:
                self.blocked.clear()
            self.blocked[host] = now + 1.0 / rate  # no token before then
            self._strike(host, now)
            return "limited"
        if self.settings.total_rate > 0 and not self._all.allow("*", now):
            self.counts["rate_limited"] += 1
            return "limited"
        return "stranger"

    def _strike(self, host: str, now: float) -> None:
        if now - self._strike_window >= STRIKE_WINDOW:
            self._strike_window = now
            self._strikes.clear()
        strikes = self._strikes.get(host, 0) + 1
        if len(self._strikes) < 65_536:
            self._strikes[host] = strikes
        if (strikes >= STRIKES and ":" not in host and host not in self.kernel
                and host not in self.never_kernel and len(self.kernel) < KERNEL_MAX):
            self.kernel[host] = now + KERNEL_BLOCK
            self.kernel_changed = True

    def expire_kernel(self, now: float) -> None:
        """Hand back to the buckets the sources whose kernel block has run out: one still
        flooding is over its rate within a burst and goes back in two seconds."""
        for host in [h for h, until in self.kernel.items() if until <= now]:
            del self.kernel[host]
            self.kernel_changed = True

    def known(self, host: str, now: float) -> bool:
        seen = self._peers.get(host)
        if seen is not None and now - seen < self.settings.peer_ttl:
            return True
        return self.is_carrier(host) or self._trusted(host)

    def peer(self, host: str, now: float) -> None:
        """We sent a request to `host`: its answers and requests are no stranger's."""
        peers = self._peers
        if host not in peers and len(peers) >= 65_536:
            ttl = self.settings.peer_ttl
            for old in [h for h, t in peers.items() if now - t >= ttl]:
                del peers[old]
            if len(peers) >= 65_536:
                return  # still full of live peers: this one is bucketed like a stranger
        peers[host] = now
        if host in self.kernel:  # a stranger no more: we sent it a request
            del self.kernel[host]
            self.kernel_changed = True

    def _trusted(self, host: str) -> bool:
        networks = self.settings.trusted
        if not networks:
            return False
        hit = self._trusted_cache.get(host)
        if hit is None:
            hit = _in_networks(host, networks)
            if len(self._trusted_cache) < 65_536:
                self._trusted_cache[host] = hit
        return hit

    # -- after parsing -----------------------------------------------------------------

    def screen(self, request: Request | None, source: Address, now: float) -> str:
        """What to do with a stranger's request (None: one refused as malformed):
        "pass" (to the transaction layer), "drop", "reject" (a stateless 403, or the 400
        a malformed request gets) or "answer" (a stateless 200 to OPTIONS)."""
        policy = self.settings.tcp if source.reliable else self.settings.udp
        if request is None:
            action = "drop" if policy == "drop" else "reject"
            self._count(action, source.host, "malformed", now)
            return action
        method = request.method
        if self._belongs_to_a_dialog(request):
            return "pass"
        if method == "ACK" or policy == "drop":
            action = "drop"
        elif method == "OPTIONS":
            action = "answer"
        else:
            action = "reject"
        self._count(action, source.host, method, now)
        return action

    def _belongs_to_a_dialog(self, request: Request) -> bool:
        to = request.headers.get("To") or ""
        if ";tag=" not in to.replace(" ", "").lower():
            return False  # cheap test first: out-of-dialog requests are most of a flood
        tag = request.to.tag  # the parser has validated To
        return tag is not None and self.in_dialog(request.call_id, tag)

    def _count(self, action: str, host: str, method: str, now: float) -> None:
        self.counts[_LABEL[action]] += 1
        if now - self._notice_window >= NOTICE_EVERY:
            self._notice_window = now
            self._noticed.clear()
        if host not in self._noticed and len(self._noticed) < NOTICE_SOURCES:
            self._noticed.add(host)
            self.notices.append(Notice(host, method, _LABEL[action]))

    def take_notices(self) -> list[Notice]:
        out, self.notices = self.notices, []
        return out


_LABEL = {"drop": "dropped", "reject": "rejected", "answer": "answered"}


def _in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    addr = parse_ip(host)
    if addr is None:
        return False
    return any(addr in net for net in networks if net.version == addr.version)
