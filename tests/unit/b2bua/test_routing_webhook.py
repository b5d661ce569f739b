"""The routing webhook's pure parts: its configuration and its answer (no open relay)."""

from __future__ import annotations

import pytest

from calltrackd.b2bua.routing_webhook import Answer, RoutingWebhook, parse_answer
from calltrackd.tracking.model import ForwardTarget

SALES, SUPPORT = ForwardTarget("sip:10.0.0.1:5060"), ForwardTarget("sip:10.0.0.2:5060")
HOOK = RoutingWebhook("http://127.0.0.1:1/route", "s" * 24,
                      names=(("sales", SALES), ("support", SUPPORT)))


def test_answer_picks_named_targets_in_its_order_once_each() -> None:
    assert parse_answer(b'{"targets": ["support", "sales", "support"]}', HOOK) == Answer(
        (SUPPORT, SALES))
    assert parse_answer(b'{"reject": 603}', HOOK) == Answer(reject=603)
    assert parse_answer(b'{"caller_name": "\\"Bob\\"\\r\\n"}', HOOK) == Answer(
        caller_name="Bob")
    assert parse_answer(b"{}", HOOK) == Answer()


@pytest.mark.parametrize(("body", "why"), [
    (b"[1]", "not a JSON object"),
    (b"nope", "not JSON"),
    (b'{"targets": []}', "targets: expected a non-empty list"),
    (b'{"targets": ["sip:10.0.0.1:5060"]}', "targets: 'sip:10.0.0.1:5060' is not one"),
    (b'{"targets": ["nobody"]}', "targets: 'nobody' is not one"),
    (b'{"reject": 200}', "reject: expected"),
    (b'{"reject": true}', "reject: expected"),
    (b'{"uri": "sip:evil.example"}', "unknown keys ['uri']"),
    (b'{"caller_name": 5}', "caller_name: expected"),
])
def test_malformed_answers_say_why(body: bytes, why: str) -> None:
    answer = parse_answer(body, HOOK)
    assert isinstance(answer, str) and answer.startswith(why), answer
