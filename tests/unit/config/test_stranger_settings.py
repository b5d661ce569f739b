"""The `[sip]` keys for strangers: defaults, values read, one problem line per bad key."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest

from calltrackd.config import ConfigError, Settings, parse_config
from calltrackd.transport.strangers import StrangerSettings


def parse(text: str) -> Settings:
    return parse_config(tomllib.loads(text))


def test_defaults_drop_on_udp_and_reject_on_tcp() -> None:
    sip = parse("").sip
    assert (sip.stranger_policy, sip.stranger_policy_tcp) == ("drop", "reject")
    assert (sip.stranger_rate, sip.stranger_burst, sip.stranger_rate_total) == (10.0, 20, 200.0)
    assert sip.trusted_sources == ()


def test_values_are_read_and_handed_to_the_gate() -> None:
    sip = parse("""
[sip]
stranger_policy = "reject"
stranger_policy_tcp = "drop"
stranger_rate = 2.5
stranger_burst = 5
stranger_rate_total = 0
trusted_sources = ["192.0.2.0/24", "2001:db8::1"]
max_call_duration = "1h"
""").sip
    gate = StrangerSettings.of(sip)
    assert (gate.udp, gate.tcp, gate.rate, gate.burst, gate.total_rate) == (
        "reject", "drop", 2.5, 5, 0.0)
    assert gate.trusted == (ipaddress.ip_network("192.0.2.0/24"),
                            ipaddress.ip_network("2001:db8::1/128"))
    assert gate.peer_ttl == 3600.0 + 600.0


def test_bad_values_name_their_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        parse("""
[sip]
stranger_policy = "ignore"
stranger_policy_tcp = 1
stranger_rate = -1
stranger_burst = 0
stranger_rate_total = "lots"
trusted_sources = ["not-a-network"]
""")
    keys = sorted(line.split(":")[0] for line in exc.value.problems)
    assert keys == ["sip.stranger_burst", "sip.stranger_policy", "sip.stranger_policy_tcp",
                    "sip.stranger_rate", "sip.stranger_rate_total", "sip.trusted_sources[0]"]
