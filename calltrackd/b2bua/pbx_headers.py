"""Attribution handed to the PBX: `X-Calltrackd-*` headers on the forwarded INVITE, and
optionally the visitor's channel before the caller's display name.

Per tracker:

    pbx_headers = ["channel", "source", "campaign"]          # default header names
    pbx_headers = {channel = "X-Ad-Channel", source = true}  # names chosen per field
    display_channel = true                                   # the desk phone shows "google/cpc"

Fields: channel, source, medium, campaign, term, landing_page, session_id, client_id,
first_time, tags. A field the attribution does not know is left out (no empty header).
Values are sanitised: control characters (CR, LF, NUL, ...) removed, `%` and non-ASCII
percent-encoded as UTF-8, at most `MAX_VALUE` characters (never cutting an escape).

Pure: configuration and the attribution in, headers out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..tracking.model import Attribution

__all__ = ["FIELDS", "MAX_VALUE", "PbxHeaders", "display_label", "headers_for",
           "parse_pbx_headers", "sanitise"]

FIELDS = ("channel", "source", "medium", "campaign", "term", "landing_page", "session_id",
          "client_id", "first_time", "tags")
MAX_VALUE = 256
MAX_LABEL = 64  # the channel before a display name: a phone shows a few characters
_TOKEN = re.compile(r"^X-[A-Za-z0-9!#$%&'*+.^_`|~-]+$", re.IGNORECASE)
# printable ASCII kept as is; `%` and everything else percent-encoded
_SAFE = "".join(chr(c) for c in range(32, 127) if chr(c) != "%" and not chr(c).isalnum())
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class PbxHeaders:
    fields: tuple[tuple[str, str], ...] = ()  # (field, header name), in configured order
    display_channel: bool = False

    @property
    def wanted(self) -> bool:
        """Whether the forwarded INVITE carries anything from the attribution."""
        return bool(self.fields) or self.display_channel


def default_name(field: str) -> str:
    return "X-Calltrackd-" + "-".join(p.capitalize() for p in field.split("_"))


def parse_pbx_headers(raw: dict[str, Any], prefix: str) -> tuple[PbxHeaders, list[str]]:
    """A tracker's `pbx_headers` and `display_channel` (at key `prefix`), and the
    problems found, one line each naming the key."""
    problems: list[str] = []
    fields: list[tuple[str, str]] = []
    given = raw.get("pbx_headers", [])
    key = f"{prefix}.pbx_headers"
    if isinstance(given, list):
        items: list[tuple[str, Any]] = [(f"{key}[{i}]", (v, True)) for i, v in enumerate(given)]
    elif isinstance(given, dict):
        items = [(f"{key}.{k}", (k, v)) for k, v in given.items()]
    else:
        items = []
        problems.append(f"{key}: expected a list of fields or a table field = header name")
    for where, (field, name) in items:
        if not isinstance(field, str) or field not in FIELDS:
            problems.append(f"{where}: unknown field {field!r} ({', '.join(FIELDS)})")
            continue
        if name is False:
            continue
        if name is True:
            name = default_name(field)
        if not isinstance(name, str) or not _TOKEN.match(name):
            problems.append(f"{where}: expected a header name starting with X- "
                            f"(letters, digits, -), or true; got {name!r}")
            continue
        if any(n.lower() == name.lower() for _, n in fields):
            problems.append(f"{where}: header {name!r} is used twice")
            continue
        fields.append((field, name))
    display = raw.get("display_channel", False)
    if not isinstance(display, bool):
        problems.append(f"{prefix}.display_channel: expected true or false")
        display = False
    return PbxHeaders(tuple(fields), display), problems


def sanitise(value: str, limit: int = MAX_VALUE) -> str:
    """A header value safe on any PBX: no control characters, `%` and non-ASCII
    percent-encoded (UTF-8), at most `limit` characters, no escape cut in two."""
    text = quote(_CONTROL.sub("", value), safe=_SAFE).strip()
    if len(text) > limit:
        text = text[:limit]
        cut = text.rfind("%", max(0, limit - 2))
        if cut != -1:
            text = text[:cut]
    return text


def _value(field: str, a: Attribution, first_time: bool | None) -> str | None:
    s = a.session
    if field == "first_time":
        return None if first_time is None else ("true" if first_time else "false")
    if field == "channel":
        return a.channel or (s.channel if s else None)
    if s is None:
        return None
    if field == "tags":
        tags = s.custom.get("tags")
        if isinstance(tags, list):
            return ",".join(str(t) for t in tags) or None
        return str(tags) if tags else None
    value = {"source": s.source, "medium": s.medium, "campaign": s.utm_campaign,
             "term": s.utm_term, "landing_page": s.landing_page, "session_id": s.id,
             "client_id": s.client_id}[field]
    return value or None


def headers_for(pbx: PbxHeaders, attribution: Attribution | None,
                first_time: bool | None) -> tuple[tuple[str, str], ...]:
    """The configured headers the attribution has values for."""
    if attribution is None:
        return ()
    out = []
    for field, name in pbx.fields:
        value = _value(field, attribution, first_time)
        if value:
            clean = sanitise(value)
            if clean:
                out.append((name, clean))
    return tuple(out)


def display_label(pbx: PbxHeaders, attribution: Attribution | None) -> str | None:
    """What goes before the caller's display name: "source/medium" of the visit, else
    the static number's channel; None when nothing is known or it is not wanted."""
    if not pbx.display_channel or attribution is None:
        return None
    s = attribution.session
    if s is not None and s.source:
        label = f"{s.source}/{s.medium}" if s.medium else s.source
    else:
        label = attribution.channel or (s.channel if s else None) or ""
    # a display name is a quoted string (RFC 3261 §25.1): no quote, backslash or control
    label = sanitise(label.replace('"', "").replace("\\", ""), MAX_LABEL)
    return label or None
