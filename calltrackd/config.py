"""TOML configuration → validated, frozen settings.

Every problem in a file is collected, each as one line naming its key
(`trackers[0].pools[1].numbers[2]: ...`), and raised together as `ConfigError`.
Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import phonenumbers

from . import __version__
from .exports.settings import alert_settings, analytics_settings, http_url_problem
from .tracking.allocator import pattern_problem
from .tracking.model import ForwardTarget, Pool, StaticNumber, Tracker, WebhookEndpoint
from .tracking.sources import Rules

__all__ = [
    "Carrier",
    "ConfigError",
    "HttpSettings",
    "ListenAddress",
    "LogSettings",
    "MediaSettings",
    "Settings",
    "SipSettings",
    "StoreSettings",
    "TrackerMedia",
    "WebhookSettings",
    "default_settings",
    "load_config",
    "parse_config",
    "parse_duration",
]

DEFAULT_PATH = Path("config/calltrackd.toml")
EVENTS = ("call.started", "call.answered", "call.ended")  # an endpoint's default events
OPTIONAL_EVENTS = ("call.updated",)  # sent only to endpoints that list them in `events`
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


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


# --- values ------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object, key: str = "duration") -> float:
    """`30`, `1.5`, `"500ms"`, `"30s"`, `"6m"`, `"1h30m"`, `"1d"` → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a duration such as \"30s\", got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{key}: must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number >= 0:
                return number
    raise ValueError(f"{key}: expected a duration such as \"30s\", \"6m\" or \"1h\", "
                     f"got {value!r}")


_SIP_URI = re.compile(
    r"^sips?:(?:[^@\s<>]+@)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?"
    r"(?:;[^\s<>?]*)?$"
)


class _Checker:
    """Collects problems while walking the TOML tree."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def table(self, data: object, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail(key, f"expected a table, got {type(data).__name__}")
            return {}
        for name in data:
            if name not in allowed:
                self.fail(f"{key}.{name}" if key else name, "unknown key")
        return data

    def get(self, data: dict[str, Any], key: str, name: str, kind: type[T] | tuple[type, ...],
            default: T, check: Callable[[Any], str | None] | None = None) -> T:
        if name not in data:
            return default
        value = data[name]
        full = f"{key}.{name}" if key else name
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(full, f"expected {names}, got {type(value).__name__} {value!r}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(full, problem)
                return default
        return cast(T, value)

    def duration(self, data: dict[str, Any], key: str, name: str, default: float) -> float:
        if name not in data:
            return default
        try:
            return parse_duration(data[name], f"{key}.{name}")
        except ValueError as exc:
            self.problems.append(str(exc))
            return default

    def positive(self, data: dict[str, Any], key: str, name: str, default: float) -> float:
        """A duration that must be above zero (a timer of 0 would spin or never wait)."""
        value = self.duration(data, key, name, default)
        if value <= 0:
            self.fail(f"{key}.{name}", f"must be more than 0, got {data[name]!r}")
            return default
        return value

    def secret(self, data: dict[str, Any], key: str, name: str) -> str | None:
        """A secret: the value itself, or where to read it (one scheme for every secret):
        `{env = "VAR"}` (an environment variable), `{file = "/path"}` (the file's text,
        stripped), `{credential = "name"}` (systemd `LoadCredential=`: the file of that
        name in $CREDENTIALS_DIRECTORY). `NAME_file = "/path"` is `NAME = {file = ...}`."""
        full = f"{key}.{name}" if key else name
        value = data.get(name)
        if f"{name}_file" in data:
            if value is not None:
                self.fail(full, f"give {name} or {name}_file, not both")
                return None
            value = {"file": data[f"{name}_file"]}
            full = f"{full}_file"
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, dict) or len(value) != 1 or not isinstance(
                next(iter(value.values())), str):
            self.fail(full, "expected a string, {env = \"VAR\"}, {file = \"/path\"} or "
                            "{credential = \"name\"}")
            return None
        (source, ref), = value.items()
        if source == "env":
            text = os.environ.get(ref)
            if not text:
                self.fail(full, f"environment variable {ref} is not set or empty")
            return text or None
        if source == "credential":
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self.fail(full, f"credential {ref!r}: $CREDENTIALS_DIRECTORY is not set "
                                "(LoadCredential= in the systemd unit)")
                return None
            ref = str(Path(directory) / ref)
        elif source != "file":
            self.fail(full, f"unknown secret source {source!r} (env, file, credential)")
            return None
        try:
            text = Path(ref).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(full, f"cannot read {ref}: {getattr(exc, 'strerror', None) or exc}")
            return None
        if not text:
            self.fail(full, f"{ref} is empty")
        return text or None

    def choice(self, data: dict[str, Any], key: str, name: str, choices: tuple[str, ...],
               default: str) -> str:
        def check(v: str) -> str | None:
            return None if v in choices else f"expected one of {', '.join(choices)}, got {v!r}"

        return self.get(data, key, name, str, default, check)

    def str_list(self, data: dict[str, Any], key: str, name: str) -> list[tuple[str, str]]:
        """[(full key, value)] for a list of strings."""
        full = f"{key}.{name}"
        value = data.get(name, [])
        if not isinstance(value, list):
            self.fail(full, f"expected a list, got {type(value).__name__} {value!r}")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((f"{full}[{i}]", item))
            else:
                self.fail(f"{full}[{i}]", f"expected a string, got {type(item).__name__}")
        return out

    def tables(self, data: dict[str, Any], key: str, name: str
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        full = f"{key}.{name}" if key else name
        value = data.get(name, [])
        if not isinstance(value, list):
            self.fail(full, "expected an array of tables ([[...]])")
            return
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield f"{full}[{i}]", item
            else:
                self.fail(f"{full}[{i}]", "expected a table")

    def e164(self, key: str, raw: str) -> str | None:
        if re.search(r"[A-Za-z]", raw):  # phonenumbers reads letters as a vanity number
            self.fail(key, f"{raw!r} has letters: write the number in digits (E.164)")
            return None
        try:
            parsed = phonenumbers.parse(raw, None)
        except phonenumbers.NumberParseException:
            parsed = None
        if (parsed is None or not raw.strip().startswith("+")
                or not phonenumbers.is_possible_number(parsed)):
            self.fail(key, f"{raw!r} is not an E.164 number (such as \"+74991234567\")")
            return None
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# --- sections ----------------------------------------------------------------------


def _listen(c: _Checker, key: str, text: str) -> ListenAddress | None:
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp", "tls"):
        c.fail(key, f"expected \"udp|tcp|tls:HOST:PORT\", got {text!r}")
        return None
    if transport == "tls":
        c.fail(key, "tls listeners are not supported yet; use udp or tcp")
        return None
    host, port = _hostport(c, key, rest)
    if host is None or port is None:
        return None
    return ListenAddress(transport, host, port)  # type: ignore[arg-type]


def _hostport(c: _Checker, key: str, text: str) -> tuple[str | None, int | None]:
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        c.fail(key, f"expected HOST:PORT (IPv6 in brackets), got {text!r}")
        return None, None
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        c.fail(key, f"port {port} out of range")
        return None, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            c.fail(key, f"{host!r} is not an IP address")
            return None, None
        host = "127.0.0.1"
    return host, port


def _sip(c: _Checker, data: object) -> SipSettings:
    d = c.table(data, "sip", {"listen", "advertise", "max_call_duration", "shutdown_grace",
                              "t1", "t2", "t4", "user_agent", "max_message_size",
                              "max_calls", "stranger_policy", "stranger_policy_tcp",
                              "stranger_rate", "stranger_burst", "stranger_rate_total",
                              "trusted_sources", "trusted_proxies"})
    base = SipSettings()
    listen = base.listen
    if "listen" in d:
        items = [_listen(c, k, v) for k, v in c.str_list(d, "sip", "listen")]
        listen = tuple(x for x in items if x is not None)
        if not listen and not items:
            c.fail("sip.listen", "needs at least one address")
    return SipSettings(
        listen=listen,
        advertise=c.get(d, "sip", "advertise", str, None),
        max_call_duration=c.positive(d, "sip", "max_call_duration", base.max_call_duration),
        shutdown_grace=c.duration(d, "sip", "shutdown_grace", base.shutdown_grace),
        t1=c.positive(d, "sip", "t1", base.t1),
        t2=c.positive(d, "sip", "t2", base.t2),
        t4=c.positive(d, "sip", "t4", base.t4),
        user_agent=c.get(d, "sip", "user_agent", str, base.user_agent),
        max_message_size=c.get(d, "sip", "max_message_size", int, base.max_message_size,
                               lambda v: None if 1500 <= v <= 1 << 20
                               else "expected 1500..1048576"),
        max_calls=c.get(d, "sip", "max_calls", int, 0,
                        lambda v: None if v >= 0 else "must not be negative"),
        stranger_policy=c.choice(d, "sip", "stranger_policy", ("drop", "reject"),  # type: ignore[arg-type]
                                 base.stranger_policy),
        stranger_policy_tcp=c.choice(d, "sip", "stranger_policy_tcp",  # type: ignore[arg-type]
                                     ("drop", "reject"), base.stranger_policy_tcp),
        stranger_rate=float(c.get(d, "sip", "stranger_rate", (int, float), base.stranger_rate,
                                  _not_negative)),
        stranger_burst=c.get(d, "sip", "stranger_burst", int, base.stranger_burst,
                             lambda v: None if v >= 1 else "must be at least 1"),
        stranger_rate_total=float(c.get(d, "sip", "stranger_rate_total", (int, float),
                                        base.stranger_rate_total, _not_negative)),
        trusted_sources=tuple(_networks(c, d, "sip", "trusted_sources")),
        trusted_proxies=tuple(_networks(c, d, "sip", "trusted_proxies")),
    )


def _not_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative (0: no limit)"


def _networks(c: _Checker, d: dict[str, Any], key: str, name: str) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    for k, v in c.str_list(d, key, name):
        try:
            networks.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            c.fail(k, f"{v!r} is not an address or network such as 198.51.100.0/24")
    return networks


def _http(c: _Checker, data: object) -> HttpSettings:
    d = c.table(data, "http", {"listen", "admin_token", "admin_token_file",
                               "session_rate_limit", "session_rate_burst", "public_url",
                               "header_timeout", "body_timeout"})
    base = HttpSettings()
    host, port = base.host, base.port
    if "listen" in d:
        raw = c.get(d, "http", "listen", str, "")
        if raw:
            h, p = _hostport(c, "http.listen", raw)
            if h is not None and p is not None:
                host, port = h, p
    return HttpSettings(
        host=host,
        port=port,
        admin_token=_admin_token(c, d),
        session_rate_limit=float(c.get(d, "http", "session_rate_limit", (int, float), 20.0,
                                       lambda v: None if v >= 0 else "must not be negative")),
        session_rate_burst=c.get(d, "http", "session_rate_burst", int, 10,
                                 lambda v: None if v >= 1 else "must be at least 1"),
        public_url=c.get(d, "http", "public_url", str, None, http_url_problem),
        header_timeout=c.positive(d, "http", "header_timeout", base.header_timeout),
        body_timeout=c.positive(d, "http", "body_timeout", base.body_timeout),
    )


def _admin_token(c: _Checker, d: dict[str, Any]) -> str | None:
    token = c.secret(d, "http", "admin_token")
    if token is not None and len(token) < 8:
        c.fail("http.admin_token", "use at least 8 characters")
        return None
    return token


def _store(c: _Checker, data: object) -> StoreSettings:
    d = c.table(data, "store", {"url", "node_id", "retention"})

    def check(v: str) -> str | None:
        if v.startswith("sqlite://") and len(v) > len("sqlite://"):
            return None
        if v.startswith(("redis://", "rediss://", "unix://")):
            return None
        return f"expected sqlite:///PATH or redis://HOST:PORT/DB, got {v!r}"

    node = c.get(d, "store", "node_id", str, None,
                 lambda v: None if re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", v)
                 else "expected 1-64 letters, digits or . _ : -")
    retention = c.duration(d, "store", "retention", 0.0)
    if 0 < retention < 86400:
        c.fail("store.retention", "use at least \"1d\" (or 0 to keep every record)")
        retention = 0.0
    return StoreSettings(c.get(d, "store", "url", str, StoreSettings().url, check), node,
                         retention)


def _log(c: _Checker, data: object) -> LogSettings:
    d = c.table(data, "log", {"level", "format"})
    return LogSettings(
        level=c.choice(d, "log", "level", ("debug", "info", "warning", "error"),
                       "info"),  # type: ignore[arg-type]
        format=c.choice(d, "log", "format", ("json", "console"), "json"),  # type: ignore[arg-type]
    )


def _webhooks(c: _Checker, data: object) -> WebhookSettings:
    d = c.table(data, "webhooks", {"timeout", "backoff_base", "backoff_cap", "max_age",
                                   "concurrency", "initial_concurrency"})
    b = WebhookSettings()
    concurrency = c.get(d, "webhooks", "concurrency", int, b.concurrency,
                        lambda v: None if 1 <= v <= 1024 else "expected 1..1024")
    initial = c.get(d, "webhooks", "initial_concurrency", int, min(b.initial_concurrency,
                                                                    concurrency),
                    lambda v: None if v >= 1 else "must be at least 1")
    if initial > concurrency:
        c.fail("webhooks.initial_concurrency",
               f"must not exceed webhooks.concurrency ({concurrency})")
        initial = concurrency
    return WebhookSettings(
        initial_concurrency=initial,
        timeout=c.positive(d, "webhooks", "timeout", b.timeout),
        backoff_base=c.positive(d, "webhooks", "backoff_base", b.backoff_base),
        backoff_cap=c.positive(d, "webhooks", "backoff_cap", b.backoff_cap),
        max_age=c.positive(d, "webhooks", "max_age", b.max_age),
        concurrency=concurrency,
    )


def _state_dir(store_url: str) -> str:
    """Where the daemon keeps its files: the SQLite store's directory, else ./var."""
    if store_url.startswith("sqlite://"):
        path = store_url[len("sqlite://"):].partition("?")[0]
        if path.startswith(("/./", "/../")):
            path = path[1:]
        if path and path != "/:memory:":
            return str(Path(path).parent)
    return "./var"


def _media(c: _Checker, data: object, store_url: str) -> MediaSettings:
    d = c.table(data, "media", {"rtpengine", "timeout", "retransmit", "tries", "recheck",
                                "direction", "ice", "flags", "replace", "spool_dir",
                                "recordings_dir", "recording_retention"})
    b = MediaSettings()
    instances = []
    for k, v in c.str_list(d, "media", "rtpengine"):
        transport, sep, rest = v.partition(":")
        if not sep or transport != "udp":
            c.fail(k, f"expected \"udp:HOST:PORT\" (rtpengine's listen-ng), got {v!r}")
            continue
        host, port = _hostport(c, k, rest)
        if host is not None and port:
            instances.append((host, port))
    direction = tuple(v for _, v in c.str_list(d, "media", "direction"))
    if direction and len(direction) != 2:
        c.fail("media.direction", "expected two interface names (the caller's side, the "
                                  f"callee's side), got {len(direction)}")
    ice = c.choice(d, "media", "ice", (*ICE_MODES, "keep"), "remove")
    timeout = c.duration(d, "media", "timeout", b.timeout)
    retransmit = c.duration(d, "media", "retransmit", b.retransmit)
    if "timeout" in d and timeout <= 0:
        c.fail("media.timeout", "must be more than 0")
    if "retransmit" in d and not 0 < retransmit <= timeout:
        c.fail("media.retransmit", f"must be more than 0 and at most media.timeout "
                                   f"({timeout:g}s)")
    state = _state_dir(store_url)
    return MediaSettings(
        rtpengine=tuple(instances),
        timeout=timeout,
        retransmit=retransmit,
        tries=c.get(d, "media", "tries", int, b.tries,
                    lambda v: None if 1 <= v <= 10 else "expected 1..10"),
        recheck=c.duration(d, "media", "recheck", b.recheck),
        direction=direction,
        ice=None if ice == "keep" else ice,
        flags=tuple(v for _, v in c.str_list(d, "media", "flags")),
        replace=tuple(v for _, v in c.str_list(d, "media", "replace"))
        if "replace" in d else b.replace,
        spool_dir=c.get(d, "media", "spool_dir", str, b.spool_dir,
                        lambda v: None if v.strip() else "must not be empty"),
        recordings_dir=c.get(d, "media", "recordings_dir", str,
                             str(Path(state) / "recordings"),
                             lambda v: None if v.strip() else "must not be empty"),
        recording_retention=c.duration(d, "media", "recording_retention",
                                       b.recording_retention),
    )


def _tracker_media(c: _Checker, key: str, d: dict[str, Any], media: MediaSettings
                   ) -> TrackerMedia | None:
    if "media" not in d and "record" not in d:
        return None
    mode = c.choice(d, key, "media", ("direct", "anchor"), "direct")
    record = c.get(d, key, "record", bool, False)
    if mode == "anchor" and not media.rtpengine:
        c.fail(f"{key}.media", "\"anchor\" needs [media] rtpengine = [\"udp:HOST:PORT\"]")
    if record and mode != "anchor":
        c.fail(f"{key}.record", "recording needs the media anchored: set media = \"anchor\"")
    return TrackerMedia(mode, record)  # type: ignore[arg-type]


def _carrier(c: _Checker, key: str, d: dict[str, Any]) -> Carrier | None:
    c.table(d, key, {"name", "addresses", "did_from", "default_country"})
    name = c.get(d, key, "name", str, "")
    if not name:
        c.fail(f"{key}.name", "required")
    networks = _networks(c, d, key, "addresses")
    if "addresses" not in d:
        c.fail(f"{key}.addresses", "required: the addresses this carrier sends from")
    country = c.get(d, key, "default_country", str, None)
    if country is not None and country.upper() not in phonenumbers.SUPPORTED_REGIONS:
        c.fail(f"{key}.default_country", f"{country!r} is not an ISO 3166 region code")
        country = None
    return Carrier(
        name=name,
        networks=tuple(networks),
        did_from=c.choice(d, key, "did_from", ("ruri", "to"), "ruri"),  # type: ignore[arg-type]
        default_country=country.upper() if country else None,
    )


def _forward(c: _Checker, key: str, item: object) -> ForwardTarget | None:
    if isinstance(item, str):
        uri, user, password = item, None, None
    elif isinstance(item, dict):
        c.table(item, key, {"uri", "username", "password", "password_file"})
        uri = c.get(item, key, "uri", str, "")
        user = c.get(item, key, "username", str, None)
        password = c.secret(item, key, "password")
        if not uri:
            c.fail(f"{key}.uri", "required")
            return None
        if (user is None) != (password is None):
            c.fail(key, "username and password go together")
    else:
        c.fail(key, "expected a SIP URI string or a table {uri, username, password}")
        return None
    m = _SIP_URI.match(uri)
    if not m or (m.group(1) and not 0 < int(m.group(1)) < 65536):
        c.fail(key if isinstance(item, str) else f"{key}.uri",
               f"{uri!r} is not a SIP URI such as \"sip:pbx.example.com:5060;transport=udp\"")
        return None
    tm = re.search(r";transport=([A-Za-z]+)", uri)
    if tm and tm.group(1).lower() not in ("udp", "tcp"):
        c.fail(key, f"transport {tm.group(1)!r} is not supported (udp, tcp)")
        return None
    return ForwardTarget(uri=uri, username=user, password=password)


def _source_rules(c: _Checker, d: dict[str, Any], key: str, base: Path | None) -> str | None:
    """A tracker's own traffic-source rules file (absolute, or relative to the config
    file), checked by reading it."""
    raw = c.get(d, key, "source_rules", str, "")
    if not raw:
        return None
    path = Path(raw)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        Rules.load(path)
    except OSError as exc:
        c.fail(f"{key}.source_rules", f"cannot read {str(path)!r}: {exc.strerror or exc}")
    except ValueError as exc:
        c.fail(f"{key}.source_rules", str(exc))
    return str(path)


def _tracker(c: _Checker, key: str, d: dict[str, Any],
             config_dir: Path | None = None) -> Tracker | None:
    c.table(d, key, {"id", "public_key", "reservation_ttl", "cooldown", "attribution_grace",
                     "target_call_min_seconds", "default_number", "forward", "ring_timeout",
                     "pools", "static", "webhooks", "media", "record", "returning_window",
                     "source_rules", "analytics", "alerts", "timezone", "viewer_tokens"})
    ident = c.get(d, key, "id", str, "")
    pk = c.get(d, key, "public_key", str, "")
    for name, value in (("id", ident), ("public_key", pk)):
        if not value:
            c.fail(f"{key}.{name}", "required")
    default_raw = c.get(d, key, "default_number", str, "")
    default = c.e164(f"{key}.default_number", default_raw) if default_raw else None
    if not default_raw:
        c.fail(f"{key}.default_number", "required: shown when no pool number is free")
    fwd_raw = d.get("forward", [])
    forward: list[ForwardTarget] = []
    if not isinstance(fwd_raw, list):
        c.fail(f"{key}.forward", "expected a list of SIP URIs")
    else:
        for i, item in enumerate(fwd_raw):
            t = _forward(c, f"{key}.forward[{i}]", item)
            if t is not None:
                forward.append(t)
        if not fwd_raw:
            c.fail(f"{key}.forward", "needs at least one target")
    pools = []
    pool_defaults: list[tuple[str, str]] = []
    for pkey, pd in c.tables(d, key, "pools"):
        c.table(pd, pkey, {"name", "sources", "numbers", "default_number"})
        pname = c.get(pd, pkey, "name", str, "")
        if not pname:
            c.fail(f"{pkey}.name", "required")
        listed = c.str_list(pd, pkey, "sources")
        for entry_key, pattern in listed:
            why = pattern_problem(pattern)
            if why:
                c.fail(entry_key, why)
        sources = tuple(v.strip().lower() for _, v in listed) or ("*",)
        numbers = [c.e164(k, v) for k, v in c.str_list(pd, pkey, "numbers")]
        if "numbers" not in pd or not pd["numbers"]:
            c.fail(f"{pkey}.numbers", "a pool needs at least one number")
        overflow_raw = c.get(pd, pkey, "default_number", str, "")
        overflow = c.e164(f"{pkey}.default_number", overflow_raw) if overflow_raw else None
        if overflow:
            pool_defaults.append((f"{pkey}.default_number", overflow))
        pools.append(Pool(pname, sources, tuple(n for n in numbers if n), overflow))
    names = [p.name for p in pools]
    for dup in {n for n in names if names.count(n) > 1}:
        c.fail(f"{key}.pools", f"pool name {dup!r} is used twice")
    static = []
    for skey, sd in c.tables(d, key, "static"):
        c.table(sd, skey, {"number", "channel"})
        num = c.e164(f"{skey}.number", c.get(sd, skey, "number", str, ""))
        channel = c.get(sd, skey, "channel", str, "")
        if not channel:
            c.fail(f"{skey}.channel", "required")
        if num:
            static.append(StaticNumber(num, channel))
    hooks = []
    for wkey, wd in c.tables(d, key, "webhooks"):
        c.table(wd, wkey, {"url", "secret", "secret_file", "events", "batch"})
        url = c.get(wd, wkey, "url", str, "")
        if not re.match(r"^https?://[^\s/]+", url):
            c.fail(f"{wkey}.url", f"expected an http:// or https:// URL, got {url!r}")
        secret = c.secret(wd, wkey, "secret") or ""
        if not secret and "secret" not in wd and "secret_file" not in wd:
            c.fail(f"{wkey}.secret", "required: the key webhook signatures are made with")
        events = []
        for k, v in c.str_list(wd, wkey, "events"):
            if v not in EVENTS + OPTIONAL_EVENTS:
                c.fail(k, f"unknown event {v!r} ({', '.join(EVENTS + OPTIONAL_EVENTS)})")
            else:
                events.append(v)
        batch = c.get(wd, wkey, "batch", int, 1,
                      lambda v: None if 1 <= v <= 1000 else "expected 1..1000 events per request")
        hooks.append(WebhookEndpoint(url, secret, tuple(events) if "events" in wd else EVENTS,
                                     batch))
    pools = _pool_defaults_distinct(c, pools, pool_defaults, default, static)
    rules_path = _source_rules(c, d, key, config_dir)
    timezone = c.get(d, key, "timezone", str, "UTC", _check_timezone)
    viewers = tuple(v for _, v in c.str_list(d, key, "viewer_tokens"))
    for i, v in enumerate(viewers):
        if len(v) < 16:
            c.fail(f"{key}.viewer_tokens[{i}]", "must be at least 16 characters (a secret)")
    base = Tracker(id="", public_key="", default_number="", forward=())
    tmin = c.get(d, key, "target_call_min_seconds", (int, float), 30.0,
                 lambda v: None if v >= 0 else "must not be negative")
    if not ident or not pk or not default:
        return None
    return Tracker(
        id=ident,
        public_key=pk,
        default_number=default,
        forward=tuple(forward),
        reservation_ttl=c.positive(d, key, "reservation_ttl", base.reservation_ttl),
        cooldown=c.duration(d, key, "cooldown", base.cooldown),
        attribution_grace=c.duration(d, key, "attribution_grace", base.attribution_grace),
        target_call_min_seconds=float(tmin),
        ring_timeout=c.positive(d, key, "ring_timeout", base.ring_timeout),
        returning_window=c.duration(d, key, "returning_window", base.returning_window),
        source_rules=rules_path,
        pools=tuple(pools),
        static=tuple(static),
        webhooks=tuple(hooks),
        # [[trackers.analytics]] and [[trackers.alerts]]: calltrackd/exports/settings.py
        analytics=analytics_settings(c, key, d),
        alerts=alert_settings(c, key, d),
        timezone=timezone,
        viewer_tokens=viewers,
    )


def _pool_defaults_distinct(c: _Checker, pools: list[Pool], defaults: list[tuple[str, str]],
                            default: str | None, static: list[StaticNumber]) -> list[Pool]:
    """A pool's default number must not be one of the tracker's other numbers (a call to
    it could not say which role it plays); the one-DID-one-tracker check covers the rest
    of the configuration. Refused ones are dropped so that they are reported once."""
    taken = {n: "a pool number" for p in pools for n in p.numbers}
    taken.update({s.number: "a static number" for s in static})
    if default:
        taken[default] = "the tracker's default_number"
    refused: set[str] = set()
    seen: set[str] = set()
    for key, number in defaults:
        role = taken.get(number) or ("another pool's default_number" if number in seen else None)
        if role:
            c.fail(key, f"{number} is already {role}; a pool's default number must be its own")
            refused.add(number)
        seen.add(number)
    return [Pool(p.name, p.sources, p.numbers, None) if p.default_number in refused else p
            for p in pools]


def _check_timezone(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (an IANA name such as \"Europe/Moscow\" or \"UTC\")"
    return None


def parse_config(data: dict[str, Any], *, source: str | None = None) -> Settings:
    c = _Checker()
    c.table(data, "", {"sip", "http", "store", "log", "webhooks", "carriers", "trackers",
                       "media"})
    sip = _sip(c, data.get("sip", {}))
    http = _http(c, data.get("http", {}))
    store = _store(c, data.get("store", {}))
    log = _log(c, data.get("log", {}))
    webhooks = _webhooks(c, data.get("webhooks", {}))
    media = _media(c, data.get("media", {}), store.url)
    policies: dict[str, TrackerMedia] = {}
    carriers = [x for k, d in c.tables(data, "", "carriers") if (x := _carrier(c, k, d))]
    carrier_names = [x.name for x in carriers]
    for i, name in enumerate(carrier_names):
        if name and name in carrier_names[:i]:
            c.fail(f"carriers[{i}].name", f"carrier name {name!r} is used twice")
    trackers = []
    seen_did: dict[str, str] = {}
    seen_id: set[str] = set()
    seen_key: set[str] = set()
    seen_viewer: set[str] = set()
    for k, d in c.tables(data, "", "trackers"):
        t = _tracker(c, k, d, Path(source).parent if source else None)
        policy = _tracker_media(c, k, d, media)
        if t is None:
            continue
        if policy is not None:
            policies[t.id] = policy
        if t.id in seen_id:
            c.fail(f"{k}.id", f"tracker id {t.id!r} is used twice")
        if t.public_key in seen_key:
            c.fail(f"{k}.public_key", f"public key {t.public_key!r} is used twice")
        seen_id.add(t.id)
        seen_key.add(t.public_key)
        mine: set[str] = set()
        for number in t.numbers():
            if number in seen_did or number in mine:
                other = seen_did.get(number, t.id)
                c.fail(k, f"number {number} is configured twice (also in tracker {other!r})")
            mine.add(number)
        for number in mine:
            seen_did[number] = t.id
        for i, token in enumerate(t.viewer_tokens):
            if token in seen_viewer or token == http.admin_token:
                c.fail(f"{k}.viewer_tokens[{i}]", "is used twice (tokens must be unique and "
                                                  "differ from http.admin_token)")
            seen_viewer.add(token)
        trackers.append(t)
    if c.problems:
        raise ConfigError(c.problems)
    media = dataclasses.replace(media, trackers=policies)
    return Settings(sip=sip, http=http, store=store, log=log, webhooks=webhooks, media=media,
                    carriers=tuple(carriers), trackers=tuple(trackers), source=source)


def load_config(path: str | Path | None) -> Settings:
    """Read and validate a file; None → config/calltrackd.toml if present, else defaults."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return default_settings()
        path = DEFAULT_PATH
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: TOML syntax error: {exc}"]) from None
    return parse_config(data, source=str(p.resolve()))
