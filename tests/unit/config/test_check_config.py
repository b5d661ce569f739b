"""`calltrackd check-config`: exit 0 for a good file, exit 2 with one line per problem
naming the key for a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from calltrackd.cli import main
from calltrackd.config import ConfigError, load_config, parse_config, parse_duration

ROOT = Path(__file__).resolve().parents[3]
GOOD = """
[sip]
listen = ["udp:127.0.0.1:5060", "tcp:[::1]:5060"]
[http]
listen = "127.0.0.1:8080"
admin_token = "a-long-token"
[[carriers]]
name = "c"
addresses = ["127.0.0.1/32", "2001:db8::/32"]
default_country = "RU"
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070;transport=udp",
           {uri = "sip:u@pbx.example.com", username = "u", password = "p"}]
  [[trackers.pools]]
  name = "paid"
  sources = ["google/cpc"]
  numbers = ["+74990000001", "+7 499 000-00-02"]
  [[trackers.static]]
  number = "+74990000100"
  channel = "billboard"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def problems(text: str) -> list[str]:
    import tomllib

    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(text))
    return exc.value.problems


def test_demo_configuration_is_valid() -> None:
    settings = load_config(ROOT / "config" / "calltrackd.toml")
    assert settings.trackers[0].id == "demo"
    assert settings.tracker_by_did("+74990000005") is settings.trackers[0]


def test_good_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    assert "ok: 1 trackers, 1 carriers" in capsys.readouterr().out


def test_settings_lookups() -> None:
    import tomllib

    s = parse_config(tomllib.loads(GOOD))
    assert s.sip.listen[1].host == "::1"
    assert s.tracker_by_did("+74990000002") is not None  # normalised to E.164
    assert s.tracker_by_key("pk_acme") is s.trackers[0]
    assert s.carrier_for("127.0.0.1") is not None
    assert s.carrier_for("::ffff:127.0.0.1") is not None
    assert s.carrier_for("2001:db8::5") is not None
    assert s.carrier_for("10.0.0.1") is None
    assert s.trackers[0].forward[1].username == "u"


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        (("[http]", "[http]\nbogus = 1"), "http.bogus: unknown key"),
        (('name = "paid"', 'name = "paid"\ncolour = "red"'), "trackers[0].pools[0].colour"),
        (('"+74990000001"', '"+7499abc"'), "trackers[0].pools[0].numbers[0]"),
        (('"udp:127.0.0.1:5060"', '"sctp:127.0.0.1:5060"'), "sip.listen[0]"),
        (('"127.0.0.1/32"', '"127.0.0.300/32"'), "carriers[0].addresses[0]"),
        (('"sip:127.0.0.1:5070;transport=udp"', '"http://pbx"'), "trackers[0].forward[0]"),
        (('default_country = "RU"', 'default_country = "XX"'), "carriers[0].default_country"),
        (('id = "acme"', 'id = "acme"\nring_timeout = "soon"'), "trackers[0].ring_timeout"),
        (('"+74990000100"', '"+74990000001"'), "number +74990000001 is configured twice"),
        (('[http]', '[log]\nlevel = "loud"\n[http]'), "log.level"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 patch: tuple[str, str], key: str) -> None:
    text = GOOD.replace(*patch, 1)
    assert text != GOOD
    assert main(["check-config", "--config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert key in err, err


def test_every_problem_is_reported_one_line_each() -> None:
    text = GOOD.replace("[http]", "[http]\nbogus = 1").replace('"+74990000001"', '"nope"')
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("http.bogus:") and "numbers[0]" in found[1]


def test_syntax_error_names_file_and_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, "[sip\n"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.toml" in err[0] and "line 1" in err[0]


def test_check_config_as_a_process(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace('forward = [', 'forwards = [1]\nforward = ['))
    proc = subprocess.run([sys.executable, "-m", "calltrackd", "check-config", "--config",
                           str(bad)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "trackers[0].forwards: unknown key"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("calltrackd ")


@pytest.mark.parametrize(("text", "seconds"), [
    (30, 30.0), ("500ms", 0.5), ("30s", 30.0), ("6m", 360.0), ("1h30m", 5400.0), ("1d", 86400.0),
    ("2.5", 2.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "5x", "", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
