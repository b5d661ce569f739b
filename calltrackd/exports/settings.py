"""`[[trackers.analytics]]` and `[[trackers.alerts]]` of the configuration: read and checked
with the configuration's checker (calltrackd/config/checker.py), one problem per line naming its
key. Secrets (api_secret, token, bot_token, a Slack URL) never appear in a problem's text.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from calltrackd.tracking.model import AlertExport, Ga4Export, MetricaExport

from .ga4 import event_name_problem

if TYPE_CHECKING:
    from calltrackd.config.checker import Checker as _Checker

__all__ = ["alert_name", "alert_settings", "analytics_settings", "http_url_problem"]


def alert_name(url: str) -> str:
    """A stable, non-secret name for a Slack webhook URL (the URL itself is the secret)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]

_OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed")


def http_url_problem(v: str) -> str | None:
    if re.match(r"^https?://[^\s/?#]+[^\s]*$", v):
        return None
    return "expected an http:// or https:// URL"


def _secret(c: _Checker, d: dict[str, Any], key: str, name: str, what: str) -> str:
    value = d.get(name)
    if not isinstance(value, str) or not value.strip():
        c.fail(f"{key}.{name}", f"required: {what}")
        return ""
    if any(ch.isspace() for ch in value.strip()) or len(value) > 4096:
        c.fail(f"{key}.{name}", "must be one token without spaces (at most 4096 characters)")
        return ""
    return value.strip()


def _base_url(c: _Checker, d: dict[str, Any], key: str, default: str) -> str:
    return c.get(d, key, "base_url", str, default, http_url_problem).rstrip("/")


def _ga4(c: _Checker, key: str, d: dict[str, Any]) -> Ga4Export | None:
    c.table(d, key, {"kind", "measurement_id", "api_secret", "base_url", "event",
                     "outcome_events", "qualified_event"})
    mid = c.get(d, key, "measurement_id", str, "")
    if not re.fullmatch(r"G-[A-Z0-9]{4,20}", mid):
        c.fail(f"{key}.measurement_id", "required: the stream's measurement id, such as "
               "\"G-ABC123XYZ\"")
    secret = _secret(c, d, key, "api_secret", "the stream's Measurement Protocol API secret")
    base = Ga4Export("", "")

    def name(field: str, value: object) -> str:
        if not isinstance(value, str):
            c.fail(field, "expected an event name (a string)")
            return ""
        problem = event_name_problem(value) if value else None
        if problem:
            c.fail(field, f"{value!r} is not a GA4 event name: {problem}")
            return ""
        return value

    event = name(f"{key}.event", d.get("event", base.event))
    qualified = name(f"{key}.qualified_event", d.get("qualified_event", base.qualified_event))
    overrides: list[tuple[str, str]] = []
    raw = d.get("outcome_events", {})
    if not isinstance(raw, dict):
        c.fail(f"{key}.outcome_events", "expected a table such as { busy = \"missed_call\" }")
    else:
        for outcome, value in raw.items():
            if outcome not in _OUTCOMES:
                c.fail(f"{key}.outcome_events.{outcome}",
                       f"unknown outcome ({', '.join(_OUTCOMES)})")
                continue
            overrides.append((outcome, name(f"{key}.outcome_events.{outcome}", value)))
    if not mid or not secret:
        return None
    return Ga4Export(mid, secret, _base_url(c, d, key, base.base_url), event, tuple(overrides),
                     qualified)


def _metrica(c: _Checker, key: str, d: dict[str, Any]) -> MetricaExport | None:
    c.table(d, key, {"kind", "counter_id", "token", "base_url", "batch", "upload_interval"})
    counter = d.get("counter_id")
    if isinstance(counter, str) and counter.isdigit():
        counter = int(counter)
    if not isinstance(counter, int) or isinstance(counter, bool) or counter <= 0:
        c.fail(f"{key}.counter_id", "required: the Metrica counter (tag) id, a number")
        counter = 0
    token = _secret(c, d, key, "token", "an OAuth token with Metrica write access")
    base = MetricaExport(0, "")
    batch = c.get(d, key, "batch", int, base.batch,
                  lambda v: None if 1 <= v <= 100_000 else "expected 1..100000 calls per upload")
    interval = c.duration(d, key, "upload_interval", base.upload_interval)
    if not counter or not token:
        return None
    return MetricaExport(counter, token, _base_url(c, d, key, base.base_url), batch, interval)


def analytics_settings(c: _Checker, tkey: str,
                       d: dict[str, Any]) -> tuple[Ga4Export | MetricaExport, ...]:
    out: list[Ga4Export | MetricaExport] = []
    for key, ad in c.tables(d, tkey, "analytics"):
        kind = ad.get("kind")
        export: Ga4Export | MetricaExport | None
        if kind == "ga4":
            export = _ga4(c, key, ad)
        elif kind == "metrica":
            export = _metrica(c, key, ad)
        else:
            c.fail(f"{key}.kind", f"expected \"ga4\" or \"metrica\", got {kind!r}")
            continue
        if export is not None:
            if any(e.ref == export.ref for e in out):
                c.fail(key, f"{export.ref} is configured twice")
                continue
            out.append(export)
    return tuple(out)


def alert_settings(c: _Checker, tkey: str, d: dict[str, Any]) -> tuple[AlertExport, ...]:
    out: list[AlertExport] = []
    for key, ad in c.tables(d, tkey, "alerts"):
        kind = ad.get("kind")
        chosen = []
        for k, v in c.str_list(ad, key, "outcomes"):
            if v in _OUTCOMES:
                chosen.append(v)
            else:
                c.fail(k, f"unknown outcome ({', '.join(_OUTCOMES)})")
        outcomes = tuple(chosen) or AlertExport("slack").outcomes
        alert: AlertExport | None = None
        if kind == "telegram":
            c.table(ad, key, {"kind", "bot_token", "chat_id", "base_url", "outcomes"})
            token = _secret(c, ad, key, "bot_token", "the bot's token from @BotFather")
            chat = ad.get("chat_id")
            if isinstance(chat, int) and not isinstance(chat, bool):
                chat = str(chat)
            if not isinstance(chat, str) or not re.fullmatch(r"-?\d+|@\w{5,}", chat):
                c.fail(f"{key}.chat_id", "required: a chat id (a number) or @channelname")
                chat = ""
            base = _base_url(c, ad, key, "https://api.telegram.org")
            if token and chat:
                alert = AlertExport("telegram", bot_token=token, chat_id=chat, base_url=base,
                                    outcomes=outcomes)
        elif kind == "slack":
            c.table(ad, key, {"kind", "url", "outcomes"})
            url = ad.get("url")
            if not isinstance(url, str) or http_url_problem(url):
                c.fail(f"{key}.url", "required: the incoming webhook's http(s):// URL")
            else:
                alert = AlertExport("slack", url=url, outcomes=outcomes, name=alert_name(url))
        else:
            c.fail(f"{key}.kind", f"expected \"telegram\" or \"slack\", got {kind!r}")
        if alert is not None:
            if any(a.ref == alert.ref for a in out):
                c.fail(key, f"the same {alert.kind} destination is configured twice")
                continue
            out.append(alert)
    return tuple(out)
