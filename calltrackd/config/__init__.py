"""TOML configuration → validated, frozen settings.

- settings.py: the dataclasses (`Settings` and one per section) and their defaults;
- checker.py: the checker that collects one problem per line naming its key, and the
  values it reads (durations, addresses, E.164 numbers);
- sections.py, trackers.py: each section read with the checker;
- loaders.py: the TOML file and the secrets (`{env=}`, `{file=}`, `{credential=}`);
- parse.py: `parse_config` (a tree) and `load_config` (a file).

Every name is importable from `calltrackd.config` as before the split.
"""

from __future__ import annotations

from .checker import Checker, parse_duration
from .parse import load_config, parse_config
from .settings import (
    DEFAULT_PATH,
    EVENTS,
    ICE_MODES,
    OPTIONAL_EVENTS,
    Carrier,
    ConfigError,
    HttpSettings,
    IPNetwork,
    ListenAddress,
    LogSettings,
    MediaSettings,
    Settings,
    SipSettings,
    StoreSettings,
    TrackerMedia,
    WebhookSettings,
    default_settings,
    parse_ip,
)

_Checker = Checker  # the name calltrackd/exports/settings.py knows it by

__all__ = [
    "DEFAULT_PATH",
    "EVENTS",
    "ICE_MODES",
    "OPTIONAL_EVENTS",
    "Carrier",
    "Checker",
    "ConfigError",
    "HttpSettings",
    "IPNetwork",
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
    "parse_ip",
]
