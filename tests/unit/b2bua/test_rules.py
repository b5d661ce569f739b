"""Routing rules (b2bua/rules.py): parsed from a configuration, chosen with a fake clock,
and explained by `calltrackd route-check`."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from calltrackd.b2bua.routing import rotation_key
from calltrackd.b2bua.rules import Facts, TrackerRules, select
from calltrackd.config import ConfigError, Settings, parse_config
from calltrackd.tracking.model import Attribution, ForwardTarget, VisitorSession

ROOT = Path(__file__).resolve().parents[3]
UTC = dt.UTC
SALES = "sip:10.0.0.1:5060"
SUPPORT = "sip:10.0.0.2:5060"
NIGHT = "sip:10.0.0.3:5060;transport=tcp"
PAID_DID, PAID_DEFAULT, BILLBOARD_DID, MAIN_DID = (
    "+74990000001", "+74990000009", "+74990000100", "+74990000000")

TOML = f"""
[[carriers]]
name = "c"
addresses = ["127.0.0.1/32"]

[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "{MAIN_DID}"
timezone = "Europe/Berlin"
holidays = [2026-12-25, "2026-12-31"]
forward = [{{uri = "{SALES}", name = "sales"}}, {{uri = "{SUPPORT}", name = "support"}},
           "{NIGHT}"]
ring_timeout = "30s"
hunt = "sequential"

  [[trackers.pools]]
  name = "paid"
  sources = ["google/cpc"]
  numbers = ["{PAID_DID}"]
  default_number = "{PAID_DEFAULT}"
  forward = ["sales"]
  ring_timeout = "25s"

  [[trackers.static]]
  number = "{BILLBOARD_DID}"
  channel = "billboard"
  hunt = "simultaneous"

  [[trackers.routes]]
  name = "night"
  hours = ["18:00-09:00"]
  forward = ["{NIGHT}"]
  ring_timeout = "15s"

  [[trackers.routes]]
  name = "holiday"
  days = ["holiday", "sat-sun"]
  forward = ["support"]

  [[trackers.routes]]
  name = "vip"
  caller_prefix = ["+7916"]
  first_time = false
  forward = ["support", "sales"]
  hunt = "round_robin"

  [[trackers.routes]]
  name = "sofas"
  source = ["google/*"]
  campaign = ["spring*"]
  landing_page = ["*/sofas*"]
  pool = ["paid"]
  ring_timeout = "40s"

  [[trackers.routes]]
  name = "billboard callers"
  static = ["billboard"]
  channel = ["billboard"]
  did = ["{BILLBOARD_DID}"]
"""


def settings(text: str = TOML) -> Settings:
    return parse_config(tomllib.loads(text))


@pytest.fixture(scope="module")
def rules() -> TrackerRules:
    return settings().routes["acme"]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# a Tuesday; Berlin is UTC+1 in winter (CET), UTC+2 in summer (CEST)
WORKDAY = "2026-12-01T10:00:00+01:00"


def test_schedule_switches_at_the_boundary_in_the_tracker_time_zone(rules: TrackerRules
                                                                    ) -> None:
    facts = Facts(MAIN_DID, "+79031112233")
    before = select(rules, facts, at("2026-12-01T16:59:59+00:00"))  # 17:59:59 Berlin
    after = select(rules, facts, at("2026-12-01T17:00:00+00:00"))  # 18:00:00 Berlin
    assert before.rule is None
    assert [t.uri for t in before.targets] == [SALES, SUPPORT, NIGHT]
    assert before.ring_timeout == 30 and before.hunt == "sequential"
    assert after.rule == "night"
    assert [t.uri for t in after.targets] == [NIGHT] and after.ring_timeout == 15
    assert "rule 'night' (trackers[0].routes[0]) does not match: 17:59 is outside " \
           "18:00-09:00" in before.why
    # the rule runs past midnight and ends at 09:00 local
    assert select(rules, facts, at("2026-12-02T07:59:00+00:00")).rule == "night"
    assert select(rules, facts, at("2026-12-02T08:00:00+00:00")).rule is None


def test_schedule_follows_daylight_saving_time(rules: TrackerRules) -> None:
    facts = Facts(MAIN_DID, "+79031112233")
    # Berlin moves to CEST on 2026-03-29: 08:30 UTC is 09:30 on the Friday before it,
    # and 07:30 UTC is 09:30 on the Monday after (08:30 CET had the offset stayed fixed)
    assert select(rules, facts, at("2026-03-27T07:30:00+00:00")).rule == "night"
    assert select(rules, facts, at("2026-03-27T08:30:00+00:00")).rule is None
    assert select(rules, facts, at("2026-03-30T06:59:00+00:00")).rule == "night"
    assert select(rules, facts, at("2026-03-30T07:30:00+00:00")).rule is None
    # the autumn: 2026-10-25 back to CET; on Monday 10-26 08:30 UTC is 09:30 local
    assert select(rules, facts, at("2026-10-26T07:30:00+00:00")).rule == "night"
    assert select(rules, facts, at("2026-10-26T08:30:00+00:00")).rule is None


def test_holidays_count_as_holiday_not_as_their_weekday(rules: TrackerRules) -> None:
    facts = Facts(MAIN_DID, "+79031112233")
    christmas = select(rules, facts, at("2026-12-25T10:00:00+01:00"))  # a Friday
    assert christmas.rule == "holiday" and [t.uri for t in christmas.targets] == [SUPPORT]
    assert any("2026-12-25 10:00 holiday" in line for line in christmas.why)
    assert select(rules, facts, at("2026-12-31T10:00:00+01:00")).rule == "holiday"
    assert select(rules, facts, at("2026-12-05T10:00:00+01:00")).rule == "holiday"  # Sat
    assert select(rules, facts, at("2026-12-04T10:00:00+01:00")).rule is None  # Friday


def test_caller_prefix_and_first_time(rules: TrackerRules) -> None:
    repeat = select(rules, Facts(MAIN_DID, "+79161234567", first_time=False), at(WORKDAY))
    assert repeat.rule == "vip" and repeat.hunt == "round_robin"
    assert [t.uri for t in repeat.targets] == [SUPPORT, SALES]
    first = select(rules, Facts(MAIN_DID, "+79161234567", first_time=True), at(WORKDAY))
    assert first.rule is None
    assert "rule 'vip' (trackers[0].routes[2]) does not match: first_time is true, " \
           "not false" in first.why
    unknown = select(rules, Facts(MAIN_DID, "+79161234567"), at(WORKDAY))
    assert unknown.rule is None  # tracking did not answer: the rule does not match
    other = select(rules, Facts(MAIN_DID, "+79031112233", first_time=False), at(WORKDAY))
    assert other.rule is None


def test_visitor_source_campaign_and_landing_page_from_the_attribution(
        rules: TrackerRules) -> None:
    session = VisitorSession("s_1", "acme", utm_campaign="Spring-Sale",
                             landing_page="https://acme.example/Sofas/42",
                             source="google", medium="cpc", channel="paid")
    facts = Facts.of(PAID_DID, "+79031112233", Attribution("dynamic", session=session), True)
    won = select(rules, facts, at(WORKDAY))
    assert won.rule == "sofas"
    # the rule sets only ring_timeout: the targets are the pool's, the hunt the tracker's
    assert won.ring_timeout == 40 and [t.uri for t in won.targets] == [SALES]
    assert f"targets {SALES} from pool 'paid'" in won.why
    elsewhere = Facts.of(PAID_DID, None, Attribution("dynamic", session=VisitorSession(
        "s_2", "acme", utm_campaign="spring", landing_page="https://acme.example/chairs",
        source="google", medium="cpc")), True)
    missed = select(rules, elsewhere, at(WORKDAY))
    assert missed.rule is None and missed.ring_timeout == 25  # the pool's
    assert any("landing page https://acme.example/chairs is not */sofas*" in line
               for line in missed.why)


def test_pool_settings_cover_the_pool_default_number(rules: TrackerRules) -> None:
    assert rules.needs_attribution  # "vip" asks first_time, "sofas" the visitor
    got = select(rules, Facts(PAID_DEFAULT, "+79031112233"), at(WORKDAY))
    assert got.rule is None and [t.uri for t in got.targets] == [SALES]


def test_static_number_rule_and_its_own_hunt(rules: TrackerRules) -> None:
    facts = Facts.of(BILLBOARD_DID, "+79031112233",
                     Attribution("static", channel="billboard"), None)
    got = select(rules, facts, at(WORKDAY))
    assert got.rule == "billboard callers"
    assert got.hunt == "simultaneous"  # the static number's, under a rule that sets none
    # the static number's channel is known without the attribution
    assert select(rules, Facts(BILLBOARD_DID, None), at(WORKDAY)).rule == "billboard callers"
    assert "ring_timeout 30s from the tracker; hunt simultaneous from static number " \
           f"{BILLBOARD_DID} (billboard)" in got.why


def test_a_tracker_without_rules_uses_its_forward() -> None:
    text = TOML.split("  [[trackers.pools]]")[0]
    plain = settings(text).routes["acme"]
    assert not plain.needs_attribution
    got = select(plain, Facts(MAIN_DID, None), at(WORKDAY))
    assert got.rule is None and len(got.targets) == 3 and got.why[-2:] == [
        f"targets {SALES}, {SUPPORT}, {NIGHT} from the tracker",
        "ring_timeout 30s from the tracker; hunt sequential from the tracker"]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text))
    return info.value.problems


BAD_RULE = """
  [[trackers.routes]]
  name = "bad"
  forward = ["sip:evil.example.com", "support"]
  days = ["mon-fry"]
  hours = ["9-18", "10:00-10:00"]
  hunt = "everyone"
  ring_timeout = "soon"
  pool = ["unpaid"]
  caller_prefix = ["7916x"]
  did = ["+74995555555"]
  source = ["google"]
  first_time = "yes"
  colour = "red"
"""


def test_rule_problems_are_one_line_each_naming_the_key() -> None:
    got = problems(TOML + BAD_RULE)
    key = "trackers[0].routes[5]"
    assert sorted(got) == sorted([
        f"{key}.colour: unknown key",
        f"{key}.did[0]: +74995555555 is not a number of this tracker",
        f"{key}.pool[0]: no pool 'unpaid' in this tracker (paid)",
        f"{key}.source[0]: " + got[[p.split(":")[0] for p in got].index(f"{key}.source[0]")
                                   ].split(": ", 1)[1],
        f"{key}.caller_prefix[0]: expected the start of an E.164 number such as "
        "\"+7916\", got '7916x'",
        f"{key}.first_time: expected true or false, got 'yes'",
        f"{key}.days[0]: expected a day (mon..sun, holiday) or a range such as "
        "\"mon-fri\", got 'mon-fry'",
        f"{key}.hours[0]: expected hours such as \"09:00-18:00\" (or \"22:00-06:00\" "
        "past midnight; start and end differ), got '9-18'",
        f"{key}.hours[1]: expected hours such as \"09:00-18:00\" (or \"22:00-06:00\" "
        "past midnight; start and end differ), got '10:00-10:00'",
        f"{key}.forward[0]: 'sip:evil.example.com' is not one of this tracker's targets: "
        "name a target of its forward (by name or URI); calls go only where the "
        "configuration says (no open relay)",
        f"{key}.ring_timeout: expected a duration such as \"30s\", \"6m\" or \"1h\", "
        "got 'soon'",
        f"{key}.hunt: expected one of sequential, simultaneous, round_robin, "
        "got 'everyone'",
    ])
    assert "can never match" in next(p for p in got if p.startswith(f"{key}.source[0]"))


def test_pool_static_and_tracker_settings_problems_name_their_keys() -> None:
    text = (TOML.replace('  forward = ["sales"]\n', '  forward = ["marketing"]\n')
            .replace('hunt = "simultaneous"', 'hunt = "all"')
            .replace('hunt = "sequential"', 'hunt = "random"')
            .replace('holidays = [2026-12-25, "2026-12-31"]', 'holidays = ["25.12.2026"]')
            .replace('name = "support"}', 'name = "sales"}'))
    assert sorted(problems(text)) == sorted([
        "trackers[0].forward[1].name: target name 'sales' is used twice",
        "trackers[0].holidays[0]: expected a date such as 2026-12-31, got '25.12.2026'",
        "trackers[0].pools[0].forward[0]: 'marketing' is not one of this tracker's "
        "targets: name a target of its forward (by name or URI); calls go only where the "
        "configuration says (no open relay)",
        "trackers[0].static[0].hunt: expected one of sequential, simultaneous, "
        "round_robin, got 'all'",
        "trackers[0].hunt: expected one of sequential, simultaneous, round_robin, "
        "got 'random'",
        "trackers[0].routes[1].forward[0]: 'support' is not one of this tracker's "
        "targets: name a target of its forward (by name or URI); calls go only where the "
        "configuration says (no open relay)",
        "trackers[0].routes[2].forward[0]: 'support' is not one of this tracker's "
        "targets: name a target of its forward (by name or URI); calls go only where the "
        "configuration says (no open relay)",
    ])


def route_check(tmp_path: Path, *args: str, config: str = TOML) -> tuple[int, str]:
    cfg = tmp_path / "calltrackd.toml"
    cfg.write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "calltrackd", "route-check", "--config", str(cfg), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr


def test_route_check_prints_the_winning_rule_and_why(tmp_path: Path) -> None:
    code, out = route_check(tmp_path, "--did", MAIN_DID, "--caller", "+79031112233",
                            "--at", "2026-12-01T19:30")  # local time of the tracker
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "tracker acme: rule 'night'"
    assert lines[1] == f"  call to {MAIN_DID} from +79031112233 at 2026-12-01 19:30 tue (CET)"
    assert lines[2] == "  rule 'night' (trackers[0].routes[0]) matches: hours"
    assert lines[3] == f"  targets {NIGHT} from rule 'night'"


def test_route_check_with_visitor_facts_and_the_fallback(tmp_path: Path) -> None:
    code, out = route_check(tmp_path, "--did", PAID_DID, "--caller", "89031112233",
                            "--at", "2026-12-01T09:00:00Z", "--channel", "paid",
                            "--source", "google/cpc", "--campaign", "spring",
                            "--landing-page", "https://acme.example/sofas")
    assert code == 0, out
    assert out.splitlines()[0] == "tracker acme: rule 'sofas'", out
    code, out = route_check(tmp_path, "--did", PAID_DID, "--at", "2026-12-01T10:00:00+01:00")
    assert code == 0 and out.splitlines()[0] == "tracker acme: no rule: the fallback", out
    assert "  rule 'sofas' (trackers[0].routes[3]) does not match: source unknown/unknown " \
           "is not google/*" in out.splitlines()


def test_route_check_says_a_round_robin_start_rotates(tmp_path: Path) -> None:
    code, out = route_check(tmp_path, "--did", MAIN_DID, "--caller", "+79161234567",
                            "--at", "2026-12-01T10:00", "--first-time", "no")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "tracker acme: rule 'vip'"
    assert f"  targets {SUPPORT}, {SALES} from rule 'vip'" in lines
    key = rotation_key("acme", (ForwardTarget(SUPPORT), ForwardTarget(SALES)))
    assert lines[-2:] == [
        "  round_robin: the start rotates, one target further at each call (above: the "
        "first call's)",
        f"  the calls are counted in the store, shared by the nodes, as rotation {key}"]


def test_route_check_refuses_an_unknown_number_and_a_bad_file(tmp_path: Path) -> None:
    code, out = route_check(tmp_path, "--did", "+74995555555")
    assert code == 2 and "--did: +74995555555 is no tracker's number" in out
    code, out = route_check(tmp_path, "--did", MAIN_DID, config=TOML + BAD_RULE)
    assert code == 2 and "trackers[0].routes[5].colour: unknown key" in out


def test_check_config_reports_rule_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(TOML + BAD_RULE)
    proc = subprocess.run([sys.executable, "-m", "calltrackd", "check-config", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 12 and all(x.startswith("trackers[0].routes[5].") for x in lines)
