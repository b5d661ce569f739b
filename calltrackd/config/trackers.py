"""`[[trackers]]`: numbers, pools, forward targets, webhooks, exports and alerts of each
tracker, read with the checker into the domain's `Tracker`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..b2bua.rules import SETTING_KEYS
from ..exports.settings import alert_settings, analytics_settings
from ..tracking.allocator import pattern_problem
from ..tracking.model import ForwardTarget, Pool, StaticNumber, Tracker, WebhookEndpoint
from ..tracking.sources import Rules
from .checker import Checker, check_timezone
from .settings import EVENTS, OPTIONAL_EVENTS

__all__ = ["tracker"]

_SIP_URI = re.compile(
    r"^sips?:(?:[^@\s<>]+@)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?"
    r"(?:;[^\s<>?]*)?$"
)


def _forward(c: Checker, key: str, item: object) -> ForwardTarget | None:
    if isinstance(item, str):
        uri, user, password = item, None, None
    elif isinstance(item, dict):
        c.table(item, key, {"uri", "username", "password", "password_file", "name"})
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
    if tm and tm.group(1).lower() not in ("udp", "tcp", "tls"):
        c.fail(key, f"transport {tm.group(1)!r} is not supported (udp, tcp, tls)")
        return None
    if uri[:5].lower() == "sips:" and tm and tm.group(1).lower() != "tls":
        c.fail(key, "a sips: URI goes over TLS: leave transport= out or say transport=tls")
        return None
    return ForwardTarget(uri=uri, username=user, password=password)


def _source_rules(c: Checker, d: dict[str, Any], key: str, base: Path | None) -> str | None:
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


def tracker(c: Checker, key: str, d: dict[str, Any],
             config_dir: Path | None = None) -> Tracker | None:
    c.table(d, key, {"id", "public_key", "reservation_ttl", "cooldown", "attribution_grace",
                     "target_call_min_seconds", "default_number", "forward", "ring_timeout",
                     "pools", "static", "webhooks", "media", "record", "returning_window",
                     "source_rules", "analytics", "alerts", "timezone", "viewer_tokens",
                     "routes", "hunt", "holidays",  # these three: b2bua/rules.py
                     "pbx_headers", "display_channel",  # b2bua/pbx_headers.py
                     "routing_webhook"})  # b2bua/routing_webhook.py
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
        c.table(pd, pkey, {"name", "sources", "numbers", "default_number", *SETTING_KEYS})
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
        c.table(sd, skey, {"number", "channel", *SETTING_KEYS})
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
    timezone = c.get(d, key, "timezone", str, "UTC", check_timezone)
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


def _pool_defaults_distinct(c: Checker, pools: list[Pool], defaults: list[tuple[str, str]],
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


