"""A configuration file or tree → validated, frozen `Settings`.

Every problem in a file is collected, each as one line naming its key, and raised together
as `ConfigError`; the sections are read in calltrackd/config/sections.py and trackers.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..b2bua.pbx_headers import PbxHeaders, parse_pbx_headers
from ..b2bua.routing_webhook import RoutingWebhook, parse_routing_webhook
from ..b2bua.rules import TrackerRules, parse_routes
from . import sections
from .checker import Checker, parse_duration
from .loaders import read_toml
from .settings import DEFAULT_PATH, ConfigError, Settings, TrackerMedia, default_settings
from .trackers import tracker

__all__ = ["load_config", "parse_config"]


def parse_config(data: dict[str, Any], *, source: str | None = None) -> Settings:
    c = Checker()
    c.table(data, "", {"sip", "http", "store", "log", "webhooks", "carriers", "trackers",
                       "media"})
    sip = sections.sip(c, data.get("sip", {}))
    http = sections.http(c, data.get("http", {}))
    store = sections.store(c, data.get("store", {}))
    log = sections.log(c, data.get("log", {}))
    webhooks = sections.webhooks(c, data.get("webhooks", {}))
    media = sections.media(c, data.get("media", {}), store.url)
    policies: dict[str, TrackerMedia] = {}
    carriers = [x for k, d in c.tables(data, "", "carriers") if (x := sections.carrier(c, k, d))]
    carrier_names = [x.name for x in carriers]
    for i, name in enumerate(carrier_names):
        if name and name in carrier_names[:i]:
            c.fail(f"carriers[{i}].name", f"carrier name {name!r} is used twice")
    trackers = []
    seen_did: dict[str, str] = {}
    seen_id: set[str] = set()
    seen_key: set[str] = set()
    seen_viewer: set[str] = set()
    routes: dict[str, TrackerRules] = {}
    pbx: dict[str, PbxHeaders] = {}
    hooks: dict[str, RoutingWebhook] = {}
    for k, d in c.tables(data, "", "trackers"):
        t = tracker(c, k, d, Path(source).parent if source else None)
        policy = sections.tracker_media(c, k, d, media)
        if t is None:
            continue
        routes[t.id], problems = parse_routes(d, k, t, parse_duration)
        c.problems += problems
        pbx[t.id], problems = parse_pbx_headers(d, k)
        c.problems += problems
        hook, problems = parse_routing_webhook(d, k, t, parse_duration, c.secret)
        c.problems += problems
        if hook is not None:
            hooks[t.id] = hook
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
                    carriers=tuple(carriers), trackers=tuple(trackers), source=source,
                    routes=routes, pbx=pbx, routing_webhooks=hooks)


def load_config(path: str | Path | None) -> Settings:
    """Read and validate a file; None → config/calltrackd.toml if present, else defaults."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return default_settings()
        path = DEFAULT_PATH
    p = Path(path)
    return parse_config(read_toml(p), source=str(p.resolve()))
