"""The configuration keys of reports: `[store] retention` and the `call.updated` event."""

from __future__ import annotations

import tomllib

import pytest
from test_check_config import GOOD, problems

from calltrackd.config import parse_config


def test_retention_keeps_everything_unless_set() -> None:
    assert parse_config(tomllib.loads(GOOD)).store.retention == 0
    text = GOOD + '\n[store]\nurl = "sqlite:///tmp/x.db"\nretention = "400d"\n'
    assert parse_config(tomllib.loads(text)).store.retention == 400 * 86400


@pytest.mark.parametrize("value", ['"2h"', '"soon"', "-1"])
def test_a_retention_under_a_day_or_not_a_duration_names_the_key(value: str) -> None:
    found = problems(GOOD + f"\n[store]\nretention = {value}\n")
    assert len(found) == 1 and found[0].startswith("store.retention"), found


def test_endpoints_may_subscribe_to_call_updated() -> None:
    hook = ('  [[trackers.webhooks]]\n  url = "https://crm.example/h"\n  secret = "s"\n'
            '  events = ["call.ended", "call.updated"]\n')
    settings = parse_config(tomllib.loads(GOOD + hook))
    assert settings.trackers[0].webhooks[0].events == ("call.ended", "call.updated")
    default = parse_config(tomllib.loads(GOOD + hook.replace(
        '  events = ["call.ended", "call.updated"]\n', "")))
    assert "call.updated" not in default.trackers[0].webhooks[0].events
