"""G.711 tables: known code points, and the same as Python's audioop where it exists."""

from __future__ import annotations

import struct
import warnings

import pytest

from calltrackd.media import g711


def test_known_code_points() -> None:
    assert g711.ulaw_decode(0xFF) == 0 and g711.ulaw_decode(0x7F) == 0
    assert g711.ulaw_decode(0x80) == 32124 and g711.ulaw_decode(0x00) == -32124
    assert g711.alaw_decode(0xD5) == 8 and g711.alaw_decode(0x55) == -8
    assert g711.alaw_decode(0xAA) == 32256 and g711.alaw_decode(0x2A) == -32256


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_then_decode_stays_within_a_quantisation_step(codec: str) -> None:
    for sample in range(-32000, 32000, 37):
        back = g711.decode_to_pcm16(codec, g711.encode(codec, [sample]))
        value = struct.unpack("<h", back)[0]
        assert abs(value - sample) <= max(16, abs(sample) // 16), (sample, value)


def test_same_as_audioop_on_every_code_and_sample() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13; present in 3.11
    codes = bytes(range(256))
    assert g711.decode_to_pcm16("PCMU", codes) == audioop.ulaw2lin(codes, 2)
    assert g711.decode_to_pcm16("PCMA", codes) == audioop.alaw2lin(codes, 2)
    samples = list(range(-32768, 32768))
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    assert g711.encode("PCMU", samples) == audioop.lin2ulaw(pcm, 2)
    assert g711.encode("PCMA", samples) == audioop.lin2alaw(pcm, 2)
