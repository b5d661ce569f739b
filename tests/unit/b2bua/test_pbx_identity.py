"""What the PBX sees of the caller (on the fake link): the attribution as X-Calltrackd-*
headers and before the display name, sanitised; the asserted identity of a trusted
carrier; Diversion/History-Info kept; Privacy: id honoured."""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

import pytest

from calltrackd.b2bua.pbx_headers import PbxHeaders, parse_pbx_headers, sanitise
from calltrackd.config import ConfigError, Settings, parse_config
from calltrackd.tracking.model import Attribution, Tracker, VisitorSession
from tests.unit.b2bua.net import CALLER, CARRIER, DID, PBX_A, Net

TOML = f"""
[[carriers]]
name = "carrier"
addresses = ["{CARRIER.host}/32"]
trust_pai = {{trust}}

[[trackers]]
id = "main"
public_key = "pk_main"
default_number = "{DID}"
forward = ["sip:{PBX_A.host}:{PBX_A.port}"]
{{pbx}}
"""


def config(pbx: str = "", trust: bool = False) -> Settings:
    return parse_config(tomllib.loads(
        TOML.replace("{pbx}", pbx).replace("{trust}", "true" if trust else "false")))


def visit(**keys: Any) -> Attribution:
    session = VisitorSession(id="s_1", tracker="main", client_id="123.456",
                             utm_campaign="winter", source="google", medium="cpc",
                             channel="paid", landing_page="https://shop.example/sale")
    return Attribution(kind="dynamic", session=dataclasses.replace(session, **keys))


def attributed(net: Net, attribution: Attribution, first_time: bool | None = True) -> None:
    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        return attribution, first_time

    net.engine.attribute = attribute


def test_pbx_gets_the_chosen_attribution_headers_and_channel_before_the_name() -> None:
    net = Net(config('pbx_headers = ["channel", "source", "campaign", "first_time", '
                     '"term"]\ndisplay_channel = true'))
    attributed(net, visit())
    net.carrier.invite(extra={})
    invite = net.pbx_a.last("INVITE")
    h = invite.headers
    assert h.get("X-Calltrackd-Channel") == "paid"
    assert h.get("X-Calltrackd-Source") == "google"
    assert h.get("X-Calltrackd-Campaign") == "winter"
    assert h.get("X-Calltrackd-First-Time") == "true"
    assert h.get("X-Calltrackd-Term") is None  # unknown: left out, not empty
    assert h.get("X-Calltrackd-Client-Id") is None  # not chosen
    assert invite.from_.display == '"google/cpc"'
    assert invite.from_.uri.user == CALLER


def test_header_names_are_configurable_and_values_sanitised() -> None:
    net = Net(config('pbx_headers = {campaign = "X-Ad", landing_page = true}'))
    attributed(net, visit(utm_campaign="зима\r\nX-Evil: 1", landing_page="/" + "a" * 400))
    net.carrier.invite()
    h = net.pbx_a.last("INVITE").headers
    assert h.get("X-Ad") == "%D0%B7%D0%B8%D0%BC%D0%B0X-Evil: 1"
    assert h.get("X-Evil") is None
    assert len(h.get("X-Calltrackd-Landing-Page") or "") == 256


def test_tracking_that_fails_costs_no_call_only_its_headers() -> None:
    net = Net(config('pbx_headers = ["channel"]\ndisplay_channel = true'))

    async def attribute(tracker: Tracker, did: str, caller: str, now: float
                        ) -> tuple[Attribution, bool | None]:
        raise TimeoutError

    net.engine.attribute = attribute
    net.carrier.invite()
    invite = net.pbx_a.last("INVITE")
    assert invite.headers.get("X-Calltrackd-Channel") is None
    assert invite.from_.display is None


def test_sanitise_never_cuts_an_escape_and_drops_control_characters() -> None:
    assert sanitise("a\x00b\x7fc\td") == "abcd"
    assert sanitise("100%") == "100%25"
    cut = sanitise("a" + "я" * 100, limit=8)
    assert cut == "a%D1%8F" and len(cut) <= 8


def test_config_problems_name_their_key() -> None:
    _, problems = parse_pbx_headers({"pbx_headers": ["channel", "colour"],
                                     "display_channel": "yes"}, "trackers[0]")
    assert problems == [
        "trackers[0].pbx_headers[1]: unknown field 'colour' (channel, source, medium, "
        "campaign, term, landing_page, session_id, client_id, first_time, tags)",
        "trackers[0].display_channel: expected true or false"]
    pbx, problems = parse_pbx_headers({"pbx_headers": {"source": "Via"}}, "t")
    assert pbx == PbxHeaders() and problems[0].startswith("t.pbx_headers.source: expected")
    twice = r"trackers\[0\]\.pbx_headers\.channel: header .* used twice"
    with pytest.raises(ConfigError, match=twice):
        config('pbx_headers = {tags = "X-Calltrackd-Channel", channel = true}')


PAI = "<sip:+79169998877@10.0.0.1>"


def test_trusted_carrier_asserts_the_caller_and_diversion_is_kept() -> None:
    net = Net(config(trust=True))
    net.carrier.invite(extra={"P-Asserted-Identity": PAI,
                              "Diversion": "<sip:+74951112233@10.0.0.1>;reason=no-answer",
                              "History-Info": "<sip:+74951112233@10.0.0.1>;index=1"})
    invite = net.pbx_a.last("INVITE")
    assert invite.from_.uri.user == "+79169998877"
    assert "+79169998877" in (invite.headers.get("P-Asserted-Identity") or "")
    assert invite.headers.get("Diversion") == "<sip:+74951112233@10.0.0.1>;reason=no-answer"
    assert invite.headers.get("History-Info") == "<sip:+74951112233@10.0.0.1>;index=1"
    net.pbx_a.respond(603)
    assert net.hooks.cdr.caller == "+79169998877"


def test_untrusted_carrier_pai_is_ignored_and_not_passed_on() -> None:
    net = Net(config(trust=False))
    net.carrier.invite(extra={"P-Asserted-Identity": PAI})
    invite = net.pbx_a.last("INVITE")
    assert invite.from_.uri.user == CALLER
    assert invite.headers.get("P-Asserted-Identity") is None
    net.pbx_a.respond(603)
    assert net.hooks.cdr.caller == CALLER


def test_privacy_id_records_the_number_but_the_pbx_gets_anonymous() -> None:
    net = Net(config(trust=True))
    net.carrier.invite(extra={"P-Asserted-Identity": PAI, "Privacy": "id"})
    invite = net.pbx_a.last("INVITE")
    assert invite.from_.uri.user == "anonymous"
    assert invite.from_.display == '"Anonymous"'
    assert invite.headers.get("P-Asserted-Identity") is None
    assert "+7916" not in str(invite.headers.get("From"))
    net.pbx_a.respond(603)
    assert net.hooks.cdr.caller == "+79169998877"
