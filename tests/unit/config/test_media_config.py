"""[media] and the trackers' media/record keys: defaults, values, one line per problem."""

from __future__ import annotations

import tomllib

import pytest

from calltrackd.config import ConfigError, parse_config

TRACKER = """
[[trackers]]
id = "acme"
public_key = "pk_acme"
default_number = "+74990000000"
forward = ["sip:127.0.0.1:5070"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(text))
    return exc.value.problems


def test_defaults_keep_media_direct_and_recordings_in_the_state_directory() -> None:
    s = parse_config(tomllib.loads(
        '[store]\nurl = "sqlite:///var/lib/calltrackd/calltrackd.db"\n' + TRACKER))
    assert s.media.rtpengine == ()
    assert s.media.recordings_dir == "/var/lib/calltrackd/recordings"
    assert s.media.for_tracker("acme").mode == "direct"
    assert not s.media.for_tracker("acme").record
    assert parse_config({}).media.recordings_dir == "var/recordings"


def test_a_full_media_section() -> None:
    s = parse_config(tomllib.loads("""
[media]
rtpengine = ["udp:127.0.0.1:2223", "udp:[::1]:2224"]
timeout = "800ms"
retransmit = "200ms"
tries = 2
recheck = "30s"
direction = ["pub", "priv"]
ice = "force"
flags = ["trust address", "strict source"]
replace = ["origin"]
spool_dir = "/var/spool/rtpengine"
recordings_dir = "/srv/recordings"
recording_retention = "30d"
media_timeout = "20s"
""" + TRACKER + 'media = "anchor"\nrecord = true\n'))
    m = s.media
    assert m.rtpengine == (("127.0.0.1", 2223), ("::1", 2224))
    assert (m.timeout, m.retransmit, m.tries, m.recheck) == (0.8, 0.2, 2, 30.0)
    assert m.direction == ("pub", "priv") and m.ice == "force"
    assert m.flags == ("trust address", "strict source") and m.replace == ("origin",)
    assert m.recordings_dir == "/srv/recordings" and m.recording_retention == 30 * 86400
    assert m.media_timeout == 20.0
    policy = m.for_tracker("acme")
    assert policy.mode == "anchor" and policy.record


def test_problems_name_their_keys() -> None:
    found = problems("""
[media]
rtpengine = ["tcp:127.0.0.1:2223", "udp:nowhere:1"]
direction = ["pub"]
ice = "sometimes"
retransmit = "5s"
tries = 0
bogus = 1
""" + TRACKER + 'media = "tunnel"\nrecord = "yes"\n')
    keys = sorted(p.split(":")[0] for p in found)
    assert keys == ["media.bogus", "media.direction", "media.ice", "media.retransmit",
                    "media.rtpengine[0]", "media.rtpengine[1]", "media.tries",
                    "trackers[0].media", "trackers[0].record"]


def test_anchor_needs_rtpengine_and_recording_needs_anchor() -> None:
    assert problems(TRACKER + 'media = "anchor"\n') == [
        'trackers[0].media: "anchor" needs [media] rtpengine = ["udp:HOST:PORT"]']
    assert problems(TRACKER + "record = true\n") == [
        'trackers[0].record: recording needs the media anchored: set media = "anchor"']
