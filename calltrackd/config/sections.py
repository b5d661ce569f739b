"""The daemon's own sections: [sip], [http], [store], [log], [webhooks], [media],
[[carriers]] and a tracker's media policy, each read with the checker into its settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import phonenumbers

from ..exports.settings import http_url_problem
from ..transport.tls import parse_tls
from .checker import Checker, hostport, ip_networks, listen_address, not_negative
from .settings import (
    ICE_MODES,
    Carrier,
    HttpSettings,
    LogSettings,
    MediaSettings,
    SipSettings,
    StoreSettings,
    TrackerMedia,
    WebhookSettings,
)

__all__ = ["carrier", "http", "log", "media", "sip", "store", "tracker_media", "webhooks"]


def sip(c: Checker, data: object) -> SipSettings:
    d = c.table(data, "sip", {"listen", "advertise", "max_call_duration", "shutdown_grace",
                              "t1", "t2", "t4", "user_agent", "max_message_size",
                              "max_calls", "stranger_policy", "stranger_policy_tcp",
                              "stranger_rate", "stranger_burst", "stranger_rate_total",
                              "trusted_sources", "trusted_proxies", "tls",
                              *TARGET_PROBE_KEYS, *TCP_KEYS})
    base = SipSettings()
    listen = base.listen
    if "listen" in d:
        items = [listen_address(c, k, v) for k, v in c.str_list(d, "sip", "listen")]
        listen = tuple(x for x in items if x is not None)
        if not listen and not items:
            c.fail("sip.listen", "needs at least one address")
    tls, problems = parse_tls(d.get("tls"))
    c.problems += problems
    if any(x.transport == "tls" for x in listen) and tls.cert is None:
        c.fail("sip.listen", "a tls: listener needs [sip.tls] cert and key")
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
                                  not_negative)),
        stranger_burst=c.get(d, "sip", "stranger_burst", int, base.stranger_burst,
                             lambda v: None if v >= 1 else "must be at least 1"),
        stranger_rate_total=float(c.get(d, "sip", "stranger_rate_total", (int, float),
                                        base.stranger_rate_total, not_negative)),
        trusted_sources=tuple(ip_networks(c, d, "sip", "trusted_sources")),
        trusted_proxies=tuple(ip_networks(c, d, "sip", "trusted_proxies")),
        tls=tls,
        target_probe_interval=c.duration(d, "sip", "target_probe_interval", 0.0),
        target_probe_timeout=c.positive(d, "sip", "target_probe_timeout", 5.0),
        target_probe_failures=c.get(d, "sip", "target_probe_failures", int, 2,
                                    lambda v: None if v >= 1 else "must be at least 1"),
        target_probe_up_codes=tuple(v for k, v in c.str_list(d, "sip", "target_probe_up_codes")
                                    if _status_code(c, k, v)),
        tcp_idle_timeout=c.duration(d, "sip", "tcp_idle_timeout", base.tcp_idle_timeout),
        tcp_max_connections=c.get(d, "sip", "tcp_max_connections", int,
                                  base.tcp_max_connections, not_negative),
        tcp_max_connections_per_source=c.get(d, "sip", "tcp_max_connections_per_source", int,
                                             base.tcp_max_connections_per_source,
                                             not_negative),
    )


TCP_KEYS = ("tcp_idle_timeout", "tcp_max_connections", "tcp_max_connections_per_source")


TARGET_PROBE_KEYS = ("target_probe_interval", "target_probe_timeout", "target_probe_failures",
                     "target_probe_up_codes")


def _status_code(c: Checker, key: str, value: str) -> bool:
    """A SIP status ("404") or a class ("4xx") an OPTIONS probe may take for "up"."""
    if re.fullmatch(r"[1-6](\d\d|xx)", value):
        return True
    c.fail(key, f'expected a status such as "404" or a class such as "4xx", got {value!r}')
    return False



def http(c: Checker, data: object) -> HttpSettings:
    d = c.table(data, "http", {"listen", "admin_token", "admin_token_file",
                               "session_rate_limit", "session_rate_burst", "public_url",
                               "header_timeout", "body_timeout"})
    base = HttpSettings()
    host, port = base.host, base.port
    if "listen" in d:
        raw = c.get(d, "http", "listen", str, "")
        if raw:
            h, p = hostport(c, "http.listen", raw)
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


def _admin_token(c: Checker, d: dict[str, Any]) -> str | None:
    token = c.secret(d, "http", "admin_token")
    if token is not None and len(token) < 8:
        c.fail("http.admin_token", "use at least 8 characters")
        return None
    return token


def store(c: Checker, data: object) -> StoreSettings:
    d = c.table(data, "store", {"url", "node_id", "retention", "rotation_wait"})

    def check(v: str) -> str | None:
        if v.startswith("sqlite://") and len(v) > len("sqlite://"):
            return None
        if v.startswith(("redis://", "rediss://", "unix://", "postgresql://", "postgres://")):
            return None
        return f"expected sqlite:///PATH, redis://HOST:PORT/DB or postgresql://HOST/DB, got {v!r}"

    node = c.get(d, "store", "node_id", str, None,
                 lambda v: None if re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", v)
                 else "expected 1-64 letters, digits or . _ : -")
    retention = c.duration(d, "store", "retention", 0.0)
    if 0 < retention < 86400:
        c.fail("store.retention", "use at least \"1d\" (or 0 to keep every record)")
        retention = 0.0
    wait = c.positive(d, "store", "rotation_wait", StoreSettings().rotation_wait)
    if wait > 1.0:
        c.fail("store.rotation_wait", "use at most \"1s\" (the caller waits that long for a "
                                      "round_robin turn when the store is slow)")
        wait = StoreSettings().rotation_wait
    return StoreSettings(c.get(d, "store", "url", str, StoreSettings().url, check), node,
                         retention, wait)


def log(c: Checker, data: object) -> LogSettings:
    d = c.table(data, "log", {"level", "format"})
    return LogSettings(
        level=c.choice(d, "log", "level", ("debug", "info", "warning", "error"),
                       "info"),  # type: ignore[arg-type]
        format=c.choice(d, "log", "format", ("json", "console"), "json"),  # type: ignore[arg-type]
    )


def webhooks(c: Checker, data: object) -> WebhookSettings:
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


def media(c: Checker, data: object, store_url: str) -> MediaSettings:
    d = c.table(data, "media", {"rtpengine", "timeout", "retransmit", "tries", "recheck",
                                "direction", "ice", "flags", "replace", "spool_dir",
                                "recordings_dir", "recording_retention",
                                "media_timeout"})
    b = MediaSettings()
    instances = []
    for k, v in c.str_list(d, "media", "rtpengine"):
        transport, sep, rest = v.partition(":")
        if not sep or transport != "udp":
            c.fail(k, f"expected \"udp:HOST:PORT\" (rtpengine's listen-ng), got {v!r}")
            continue
        host, port = hostport(c, k, rest)
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
        media_timeout=c.duration(d, "media", "media_timeout", b.media_timeout),
    )


def tracker_media(c: Checker, key: str, d: dict[str, Any], media: MediaSettings
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


def carrier(c: Checker, key: str, d: dict[str, Any]) -> Carrier | None:
    c.table(d, key, {"name", "addresses", "did_from", "default_country", "trust_pai"})
    name = c.get(d, key, "name", str, "")
    if not name:
        c.fail(f"{key}.name", "required")
    networks = ip_networks(c, d, key, "addresses")
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
        trust_pai=c.get(d, key, "trust_pai", bool, False),  # b2bua/routing.py
    )


