"""A visit's traffic source, as the analytics tools name it (pure: no I/O after import).

`classify` takes what the site snippet sends (UTM tags, the landing page's address with
its query, the referrer) and answers source, medium and channel, in the order GA4 and
Metrica use: UTM tags, else a click id in the landing page, else the referrer (search
engine → organic, social network → social, webmail → email, the site itself or a
sign-in/payment page → no new source, any other site → referral), else direct.

The rules are data: `sources.toml` next to this module (its header documents the
format). `Rules.load(path)` reads another file of the same shape.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

Channel = Literal["paid", "organic", "social", "referral", "email", "direct", "other"]
CHANNELS: tuple[Channel, ...] = ("paid", "organic", "social", "referral", "email", "direct",
                                 "other")
How = Literal["utm", "click_id", "referrer", "internal", "direct"]

DIRECT_SOURCE = "(direct)"
NONE_MEDIUM = "(none)"
# second-level labels of country endings: google.co.uk, google.com.br, yandex.com.tr
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "or", "ne", "go",
                           "gob", "nic", "ltd", "plc", "mil", "info", "biz", "in", "nom"})


@dataclass(frozen=True, slots=True)
class Source:
    """Where a visit came from. `how` says which rule decided: "internal" is a referrer
    of the site itself (or an ignored page) — no new source; its source is then direct."""

    source: str
    medium: str
    channel: Channel
    how: How
    click_id: str | None = None  # "gclid=EAIaIQ..." when a click id decided

    @property
    def key(self) -> str:
        return f"{self.source}/{self.medium}"


DIRECT = Source(DIRECT_SOURCE, NONE_MEDIUM, "direct", "direct")


@dataclass(frozen=True, slots=True)
class _HostRule:
    source: str
    medium: str


@dataclass(slots=True)
class Rules:
    """The rule tables, indexed for lookup by host."""

    click_ids: list[tuple[str, str, str]] = field(default_factory=list)  # param, src, med
    exact: dict[str, _HostRule | None] = field(default_factory=dict)  # None: ignored
    wild: dict[tuple[str, ...], _HostRule | None] = field(default_factory=dict)
    apps: dict[str, _HostRule] = field(default_factory=dict)
    media: dict[str, Channel] = field(default_factory=dict)
    media_prefixes: list[tuple[str, Channel]] = field(default_factory=list)
    channel_sources: dict[str, Channel] = field(default_factory=dict)
    _hosts: dict[str, tuple[bool, _HostRule | None]] = field(default_factory=dict)

    @classmethod
    def load(cls, extra: Path | None = None) -> Rules:
        """The packaged `sources.toml`, with the rules of `extra` (a file of the same
        shape) before them: its entries win where both name a click id, host or medium.
        Raises ValueError naming the file and the entry when one is malformed."""
        packaged = resources.files("calltrackd.tracking").joinpath("sources.toml")
        files = [(str(extra), extra.read_text())] if extra is not None else []
        files.append(("sources.toml", packaged.read_text()))
        rules = cls()
        for name, text in files:
            try:
                rules.add(tomllib.loads(text))
            except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError,
                    AttributeError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        return rules

    def add(self, data: Mapping[str, Any]) -> None:
        """Add the rules of one file (entries already known keep their first rule)."""
        rules = self
        for channel, media in data.get("channels", {}).items():
            ch = _channel(channel)
            for m in media:
                m = str(m).strip().lower()
                if m.endswith("*"):
                    rules.media_prefixes.append((m[:-1], ch))
                else:
                    rules.media.setdefault(m, ch)
        for channel, names in data.get("channel_sources", {}).items():
            for s in names:
                rules.channel_sources.setdefault(str(s).strip().lower(), _channel(channel))
        for i, c in enumerate(data.get("click_ids", [])):
            if not all(isinstance(c.get(k), str) and c[k] for k in ("param", "source", "medium")):
                raise ValueError(f"click_ids[{i}]: needs param, source and medium")
            rules.click_ids.append((c["param"].lower(), c["source"].lower(), c["medium"].lower()))
        for group, medium in (("search", "organic"), ("social", "social"), ("email", "email")):
            for i, r in enumerate(data.get(group, [])):
                if not isinstance(r.get("source"), str) or not r["source"]:
                    raise ValueError(f"{group}[{i}]: needs a source")
                rule = _HostRule(r["source"].lower(), medium)
                for d in r.get("domains", []):
                    rules._add_domain(d, rule)
                for app in r.get("apps", []):
                    rules.apps.setdefault(str(app).lower(), rule)
        for d in data.get("ignore", []):
            rules._add_domain(d, None)

    def _add_domain(self, domain: object, rule: _HostRule | None) -> None:
        if not isinstance(domain, str) or not domain.strip(". *"):
            raise ValueError(f"not a domain: {domain!r}")
        d = domain.strip().lower().rstrip(".")
        if d.endswith(".*"):
            self.wild.setdefault(tuple(d[:-2].split(".")), rule)
        else:
            self.exact.setdefault(d, rule)

    # --- lookups -----------------------------------------------------------------------

    def channel(self, source: str, medium: str) -> Channel:
        """The channel of a source/medium pair (both lowercased)."""
        if source == DIRECT_SOURCE and medium == NONE_MEDIUM:
            return "direct"
        ch = self.media.get(medium)
        if ch is not None:
            return ch
        for prefix, pch in self.media_prefixes:
            if medium.startswith(prefix):
                return pch
        return self.channel_sources.get(source, "other")

    def host_rule(self, host: str) -> tuple[bool, _HostRule | None]:
        """(matched, rule) for a referrer host: the rule naming most of the host wins;
        (True, None) for an ignored page."""
        hit = self._hosts.get(host)
        if hit is None:
            if len(self._hosts) >= 4096:
                self._hosts.clear()
            hit = self._hosts[host] = self._match(host)
        return hit

    def _match(self, host: str) -> tuple[bool, _HostRule | None]:
        labels = host.split(".")
        n = len(labels)
        for i in range(n):  # longest suffix first
            suffix = ".".join(labels[i:])
            if suffix in self.exact:
                return True, self.exact[suffix]
            for j in range(i + 1, n):  # "google.*": labels i..j, then a country ending
                tail = labels[j:]
                if len(tail) > 2 or (len(tail) == 2 and not (
                        tail[0] in _SECOND_LEVEL and len(tail[1]) == 2)):
                    continue
                base = tuple(labels[i:j])
                if base in self.wild:
                    return True, self.wild[base]
        return False, None

    def click(self, query: Sequence[tuple[str, str]]) -> tuple[str, str, str] | None:
        """(source, medium, "param=value") of the first click id of the rules present."""
        present = {k.lower(): v for k, v in reversed(query) if v}
        for param, source, medium in self.click_ids:
            value = present.get(param)
            if value is not None:
                return source, medium, f"{param}={value}"
        return None


def _channel(name: str) -> Channel:
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r} ({', '.join(CHANNELS)})")
    return name


RULES = Rules.load()


# --- classification ------------------------------------------------------------------


def host_of(url: str | None) -> str | None:
    """The lowercased host of an address ("https://WWW.Example.com:8443/x" → "www.example.com")."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def _bare(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def is_own(referrer_host: str, landing_host: str | None) -> bool:
    """The referrer is the site itself: the landing page's host, its `www.` twin, a
    subdomain of it, or the domain it is a subdomain of."""
    if landing_host is None:
        return False
    ref, own = _bare(referrer_host), _bare(landing_host)
    if ref == own or ref.endswith("." + own):
        return True
    return own.endswith("." + ref) and "." in ref  # shop.acme.example ← acme.example


def query_of(url: str | None) -> list[tuple[str, str]]:
    if not url:
        return []
    try:
        return parse_qsl(urlsplit(url.strip()).query, keep_blank_values=False)
    except ValueError:
        return []


def utm_of(url: str | None) -> dict[str, str]:
    """The utm_* parameters of an address (first value of each)."""
    out: dict[str, str] = {}
    for k, v in query_of(url):
        k = k.lower()
        if k in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
            out.setdefault(k, v)
    return out


def classify(
    utm_source: str | None,
    utm_medium: str | None,
    landing_page: str | None,
    referrer: str | None,
    rules: Rules = RULES,
) -> Source:
    """The source of one arrival on the site (see the module's docstring)."""
    if utm_source and utm_source.strip():
        source = utm_source.strip().lower()
        medium = (utm_medium or "").strip().lower() or NONE_MEDIUM
        return Source(source, medium, rules.channel(source, medium), "utm")
    click = rules.click(query_of(landing_page))
    if click is not None:
        source, medium, cid = click
        return Source(source, medium, rules.channel(source, medium), "click_id", cid)
    return from_referrer(referrer, host_of(landing_page), rules)


def from_referrer(referrer: str | None, landing_host: str | None,
                  rules: Rules = RULES) -> Source:
    ref = (referrer or "").strip()
    if not ref:
        return DIRECT
    scheme, _, rest = ref.partition("://")
    if scheme.lower() == "android-app":  # android-app://com.vkontakte.android/...
        package = rest.split("/", 1)[0].lower()
        if not package:
            return DIRECT
        app = rules.apps.get(package)
        if app is not None:
            return Source(app.source, app.medium, rules.channel(app.source, app.medium),
                          "referrer")
        return Source(package, "referral", "referral", "referrer")
    host = host_of(ref)
    if host is None:
        return DIRECT
    if is_own(host, landing_host):
        return Source(DIRECT_SOURCE, NONE_MEDIUM, "direct", "internal")
    matched, rule = rules.host_rule(host)
    if matched and rule is None:
        return Source(DIRECT_SOURCE, NONE_MEDIUM, "direct", "internal")
    if rule is not None:
        return Source(rule.source, rule.medium, rules.channel(rule.source, rule.medium),
                      "referrer")
    return Source(_bare(host), "referral", "referral", "referrer")


def channel_of(source: str | None, medium: str | None, rules: Rules = RULES) -> Channel:
    """The channel of a source/medium pair as a visit's UTM tags would give it."""
    s = (source or "").strip().lower() or DIRECT_SOURCE
    m = (medium or "").strip().lower() or NONE_MEDIUM
    return rules.channel(s, m)

