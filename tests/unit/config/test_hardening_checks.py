"""`check-config` refuses what would never work (zero timers, letters in numbers,
duplicate carriers), and secrets come from the file, the environment, a file, or a
systemd credential, all in one scheme."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import structlog
from test_check_config import GOOD

from calltrackd.cli import main
from calltrackd.config import ConfigError, parse_config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(text))
    return exc.value.problems


@pytest.mark.parametrize(("edit", "key"), [
    (("[sip]\n", '[sip]\nt1 = "0s"\n'), "sip.t1: must be more than 0"),
    (("[sip]\n", "[sip]\nt2 = 0\n"), "sip.t2: must be more than 0"),
    (("[sip]\n", "[sip]\nt4 = -1\n"), "sip.t4: must not be negative"),
    (("[sip]\n", '[sip]\nmax_call_duration = "0s"\n'), "sip.max_call_duration: must be more"),
    (('id = "acme"\n', 'id = "acme"\nring_timeout = "0s"\n'), "trackers[0].ring_timeout:"),
    (('id = "acme"\n', 'id = "acme"\nreservation_ttl = 0\n'), "trackers[0].reservation_ttl:"),
    (('"+74990000001"', '"+7499CALLNOW"'), "trackers[0].pools[0].numbers[0]: '+7499CALLNOW' has"),
    (('default_number = "+74990000000"', 'default_number = "+7499000000O"'),
     "trackers[0].default_number: "),
    (('number = "+74990000100"', 'number = "+7 499 FLOWERS"'), "trackers[0].static[0].number"),
    (("[http]\n", '[http]\nheader_timeout = "0s"\n'), "http.header_timeout: must be more"),
])
def test_never_working_values_are_refused_naming_the_key(edit: tuple[str, str],
                                                         key: str) -> None:
    found = problems(GOOD.replace(*edit, 1))
    assert any(p.startswith(key) for p in found), found


def test_duplicate_carrier_names_are_refused() -> None:
    text = GOOD + '[[carriers]]\nname = "c"\naddresses = ["192.0.2.0/24"]\n'
    assert "carriers[1].name: carrier name 'c' is used twice" in problems(text)


def test_secrets_from_env_file_and_credential(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("token-from-a-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pbx").write_text("pbx-password")
    (creds / "whsec").write_text("whsec_from_credential")
    monkeypatch.setenv("CALLTRACKD_ADMIN_TOKEN", "token-from-the-env")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    hooks = ('  [[trackers.webhooks]]\n  url = "http://127.0.0.1:9/hook"\n'
             '  secret = {credential = "whsec"}\n')
    text = (GOOD.replace('admin_token = "a-long-token"',
                         'admin_token = {env = "CALLTRACKD_ADMIN_TOKEN"}')
            .replace('password = "p"', 'password = {credential = "pbx"}') + hooks)
    s = parse_config(tomllib.loads(text))
    assert s.http.admin_token == "token-from-the-env"
    assert s.trackers[0].forward[1].password == "pbx-password"
    assert s.trackers[0].webhooks[0].secret == "whsec_from_credential"
    s = parse_config(tomllib.loads(GOOD.replace(
        'admin_token = "a-long-token"', f'admin_token_file = "{tmp_path / "token"}"')))
    assert s.http.admin_token == "token-from-a-file"
    s = parse_config(tomllib.loads(GOOD.replace(
        'admin_token = "a-long-token"', f'admin_token = {{file = "{tmp_path / "token"}"}}')))
    assert s.http.admin_token == "token-from-a-file"


def test_secret_sources_that_do_not_resolve_name_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for value, expected in [
        ('{env = "NOPE"}', "http.admin_token: environment variable NOPE is not set"),
        (f'{{file = "{tmp_path}/missing"}}', "http.admin_token: cannot read"),
        ('{credential = "x"}', "http.admin_token: credential 'x': $CREDENTIALS_DIRECTORY"),
        ('{vault = "x"}', "http.admin_token: unknown secret source 'vault'"),
        ('{env = "A", file = "B"}', "http.admin_token: expected a string, {env"),
    ]:
        found = problems(GOOD.replace('"a-long-token"', value))
        assert any(p.startswith(expected) for p in found), (value, found)
    both = GOOD.replace('admin_token = "a-long-token"',
                        'admin_token = "a-long-token"\nadmin_token_file = "/x"')
    assert "http.admin_token: give admin_token or admin_token_file, not both" in problems(both)


def test_check_config_cli_prints_one_line_per_refusal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(GOOD.replace("[sip]\n", '[sip]\nt1 = "0s"\n', 1)
                   + '[[carriers]]\nname = "c"\naddresses = ["192.0.2.0/24"]\n')
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["sip.t1: must be more than 0, got '0s'",
                   "carriers[1].name: carrier name 'c' is used twice"]


def test_run_without_a_configuration_warns_loudly() -> None:
    from calltrackd.cli import _warn_defaults
    from calltrackd.config import default_settings

    with structlog.testing.capture_logs() as logs:
        _warn_defaults(default_settings())
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["event"] == "config.defaults"
    assert logs[0]["message"].startswith("NO CONFIGURATION FILE")
    assert logs[0]["sip"] == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"]
    assert logs[0]["carriers"] == 0 and "every INVITE gets 403" in logs[0]["hint"]
