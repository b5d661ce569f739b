"""The configuration as the daemon uses it: frozen dataclasses, one per TOML section.

Read and checked by calltrackd/config/parse.py; the defaults here are the daemon's defaults.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .. import __version__
from ..tracking.model import Tracker
from ..transport.tls import TlsSettings

if TYPE_CHECKING:  # b2bua imports config: a runtime import here would be a cycle
    from ..b2bua.pbx_headers import PbxHeaders
    from ..b2bua.routing_webhook import RoutingWebhook
    from ..b2bua.rules import TrackerRules

__all__ = [
    "DEFAULT_PATH", "EVENTS", "ICE_MODES", "OPTIONAL_EVENTS", "Carrier", "ConfigError",
    "HttpSettings", "IPNetwork", "ListenAddress", "LogSettings", "MediaSettings", "Settings",
    "SipSettings", "StoreSettings", "TrackerMedia", "WebhookSettings", "default_settings",
    "parse_ip",
]

DEFAULT_PATH = Path("config/calltrackd.toml")
EVENTS = ("call.started", "call.answered", "call.ended")  # an endpoint's default events
# sent only to endpoints that list them in `events`
OPTIONAL_EVENTS = ("call.updated", "call.recording")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: Literal["udp", "tcp", "tls"]
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SipSettings:
    listen: tuple[ListenAddress, ...] = (
        ListenAddress("udp", "0.0.0.0", 5060),
        ListenAddress("tcp", "0.0.0.0", 5060),
    )
    advertise: str | None = None
    max_call_duration: float = 14400.0
    shutdown_grace: float = 30.0
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    user_agent: str = f"calltrackd/{__version__}"
    max_message_size: int = 65535
    max_calls: int = 0  # 0: no limit
    # sources that are no carrier, no trusted source and no peer (calltrackd/transport/
    # strangers.py): their requests dropped or answered statelessly, their datagrams
    # limited per source and all together before parsing (0: no limit)
    stranger_policy: Literal["drop", "reject"] = "drop"  # over UDP
    stranger_policy_tcp: Literal["drop", "reject"] = "reject"
    stranger_rate: float = 10.0  # datagrams/s per source
    stranger_burst: int = 20
    stranger_rate_total: float = 200.0  # datagrams/s of all strangers together
    trusted_sources: tuple[IPNetwork, ...] = ()  # never strangers (PBXes, monitoring)
    # proxies (Kamailio with the carrier ACL) whose X-Calltrackd-Carrier header is believed
    trusted_proxies: tuple[IPNetwork, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)  # [sip.tls]: calltrackd/transport/tls.py
    # OPTIONS probes of the forward targets (calltrackd/b2bua/health.py); interval 0: off
    target_probe_interval: float = 0.0
    target_probe_timeout: float = 5.0
    target_probe_failures: int = 2
    target_probe_up_codes: tuple[str, ...] = ()  # besides 2xx: "404", "4xx"
    # TCP and TLS connections (calltrackd/transport/streams.py): closed after this long
    # without traffic when no transaction or dialog needs them (0: never); inbound ones
    # bounded in total and per source host (0: no bound)
    tcp_idle_timeout: float = 300.0
    tcp_max_connections: int = 1000
    tcp_max_connections_per_source: int = 32


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None
    session_rate_limit: float = 20.0  # new sessions per minute per client IP; 0: off
    session_rate_burst: int = 10
    public_url: str | None = None  # how users reach this daemon (links in alerts, exports)
    header_timeout: float = 10.0  # request line + headers, and idle keep-alive
    body_timeout: float = 10.0  # a request body


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = "sqlite:///./var/calltrackd.db"
    node_id: str | None = None  # None: derived (see `node_id()`)
    retention: float = 0.0  # seconds a call record is kept (0: for ever)
    rotation_wait: float = 0.1  # seconds a round_robin call waits for its count (rotation.py)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout: float = 10.0
    backoff_base: float = 5.0
    backoff_cap: float = 3600.0
    max_age: float = 86400.0  # retried at least this long before marked failed
    concurrency: int = 32  # requests in flight per endpoint at most (the adaptive ceiling)
    initial_concurrency: int = 4  # where each endpoint's adaptive window starts


@dataclass(frozen=True, slots=True)
class TrackerMedia:
    """A tracker's `media` and `record` keys."""

    mode: Literal["direct", "anchor"] = "direct"
    record: bool = False


ICE_MODES = ("remove", "force", "default", "optional", "force-relay")


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """`[media]`: rtpengine instances and what the ng client passes them."""

    rtpengine: tuple[tuple[str, int], ...] = ()
    timeout: float = 1.0  # a command's budget: answer or error within it
    retransmit: float = 0.25  # an unanswered request is sent again after this
    tries: int = 3  # sends to one instance before the next is asked
    recheck: float = 10.0  # an instance that failed is skipped this long
    direction: tuple[str, ...] = ()  # two rtpengine interface names: caller, callee side
    ice: str | None = "remove"
    flags: tuple[str, ...] = ()
    replace: tuple[str, ...] = ("origin", "session connection")
    spool_dir: str = "/var/spool/rtpengine"  # rtpengine's recording-dir
    recordings_dir: str = "./var/recordings"
    recording_retention: float = 90 * 86400.0  # 0: keep forever
    media_timeout: float = 0.0  # an anchored call without RTP this long is ended; 0: off
    trackers: dict[str, TrackerMedia] = field(default_factory=dict, compare=False)

    def for_tracker(self, tracker_id: str) -> TrackerMedia:
        return self.trackers.get(tracker_id, _DIRECT)


_DIRECT = TrackerMedia()


@dataclass(frozen=True, slots=True)
class Carrier:
    name: str
    networks: tuple[IPNetwork, ...]
    did_from: Literal["ruri", "to"] = "ruri"
    default_country: str | None = None
    trust_pai: bool = False  # P-Asserted-Identity names the caller (b2bua/routing.py)

    def admits(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in self.networks if net.version == ip.version)


@dataclass(frozen=True, slots=True)
class Settings:
    sip: SipSettings = field(default_factory=SipSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    log: LogSettings = field(default_factory=LogSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    carriers: tuple[Carrier, ...] = ()
    trackers: tuple[Tracker, ...] = ()
    source: str | None = None  # the file it came from; None for built-in defaults
    # each tracker's routing rules, pool and static number settings (b2bua/rules.py)
    routes: dict[str, TrackerRules] = field(default_factory=dict, compare=False)
    # each tracker's attribution headers toward its PBX (b2bua/pbx_headers.py)
    pbx: dict[str, PbxHeaders] = field(default_factory=dict, compare=False)
    # each tracker's routing webhook (b2bua/routing_webhook.py)
    routing_webhooks: dict[str, RoutingWebhook] = field(default_factory=dict, compare=False)
    _by_did: dict[str, Tracker] = field(default_factory=dict, repr=False, compare=False)
    _by_key: dict[str, Tracker] = field(default_factory=dict, repr=False, compare=False)
    _carrier_cache: dict[str, Carrier | None] = field(
        default_factory=dict, repr=False, compare=False)
    _proxy_cache: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for tracker in self.trackers:
            for number in tracker.numbers():
                self._by_did[number] = tracker
            self._by_key[tracker.public_key] = tracker

    def tracker_by_did(self, e164: str) -> Tracker | None:
        return self._by_did.get(e164)

    def tracker_by_key(self, public_key: str) -> Tracker | None:
        return self._by_key.get(public_key)

    def carrier_for(self, ip: str) -> Carrier | None:
        """The carrier an address belongs to (cached: called on every INVITE)."""
        try:
            return self._carrier_cache[ip]
        except KeyError:
            pass
        addr = parse_ip(ip)
        if addr is None:
            return None
        found = next((c for c in self.carriers if c.admits(addr)), None)
        if len(self._carrier_cache) < 65536:
            self._carrier_cache[ip] = found
        return found

    def carrier_by_name(self, name: str) -> Carrier | None:
        return next((c for c in self.carriers if c.name == name), None)

    def is_trusted_proxy(self, ip: str) -> bool:
        """Whether `ip` is in `sip.trusted_proxies` (cached: asked on every INVITE)."""
        proxies = self.sip.trusted_proxies
        if not proxies:
            return False
        known = self._proxy_cache.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        found = any(addr in net for net in proxies if net.version == addr.version)
        if len(self._proxy_cache) < 65536:
            self._proxy_cache[ip] = found
        return found


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a socket gives it (IPv6 maybe in brackets, IPv4 maybe mapped)."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def default_settings() -> Settings:
    return Settings()
