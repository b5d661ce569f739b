"""The checker: walks the TOML tree and collects every problem, each as one line naming
its key (`trackers[0].pools[1].numbers[2]: ...`); and the values it reads (durations,
addresses, networks, E.164 numbers, time zones). Unknown keys are errors: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import phonenumbers

from .loaders import read_secret
from .settings import IPNetwork, ListenAddress

__all__ = [
    "Checker",
    "check_timezone",
    "hostport",
    "ip_networks",
    "listen_address",
    "not_negative",
    "parse_duration",
]

T = TypeVar("T")

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


class Checker:
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
        """A secret: the value itself or where to read it (calltrackd/config/loaders.py).
        `NAME_file = "/path"` is `NAME = {file = ...}`."""
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
        try:
            return read_secret(source, ref)
        except ValueError as exc:
            self.fail(full, str(exc))
            return None

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



def listen_address(c: Checker, key: str, text: str) -> ListenAddress | None:
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp", "tls"):
        c.fail(key, f"expected \"udp|tcp|tls:HOST:PORT\", got {text!r}")
        return None
    host, port = hostport(c, key, rest)
    if host is None or port is None:
        return None
    return ListenAddress(transport, host, port)  # type: ignore[arg-type]


def hostport(c: Checker, key: str, text: str) -> tuple[str | None, int | None]:
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



def not_negative(v: float) -> str | None:
    return None if v >= 0 else "must not be negative (0: no limit)"


def ip_networks(c: Checker, d: dict[str, Any], key: str, name: str) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    for k, v in c.str_list(d, key, name):
        try:
            networks.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            c.fail(k, f"{v!r} is not an address or network such as 198.51.100.0/24")
    return networks



def check_timezone(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name!r} (an IANA name such as \"Europe/Moscow\" or \"UTC\")"
    return None


