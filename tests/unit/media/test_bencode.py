"""Bencode: round trips, rtpengine's wire examples, and bad input refused with
BencodeError only."""

from __future__ import annotations

import random

import pytest

from calltrackd.media.bencode import MAX_DEPTH, BencodeError, decode, encode


def test_rtpengine_ping_and_pong_as_on_the_wire() -> None:
    assert encode({"command": "ping"}) == b"d7:command4:pinge"
    assert decode(b"d6:result4:ponge", text=True) == {"result": "pong"}


def test_round_trip_of_an_offer_like_dictionary() -> None:
    value = {"command": "offer", "call-id": "c_1", "sdp": "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
             "flags": ["trust address"], "replace": ["origin", "session connection"],
             "TOS": 184, "negative": -5, "nested": {"a": [1, [2, {"b": "c"}]]}}
    assert decode(encode(value), text=True) == value


def test_keys_are_sorted_on_output_and_accepted_unsorted_on_input() -> None:
    assert encode({"b": 1, "a": 2}) == b"d1:ai2e1:bi1ee"
    assert decode(b"d1:bi1e1:ai2ee") == {"b": 1, "a": 2}


def test_strings_as_bytes_by_default_and_non_utf8_survives_text_mode() -> None:
    assert decode(b"3:abc") == b"abc"
    raw = b"d1:s2:\xff\xfee"
    value = decode(raw, text=True)
    assert encode(value) == raw


@pytest.mark.parametrize("bad", [
    b"", b"i", b"i12", b"ie", b"i-e", b"i-0e", b"i03e", b"i1.5e", b"3:ab", b"03:abc",
    b"-1:a", b"l", b"li1e", b"d", b"d1:a", b"di1ei2ee", b"d1:ai1e1:ai2ee", b"x", b"i1ei2e",
    b"5", b"1:", b"i" + b"9" * 2000 + b"e", b"9" * 20 + b":x",
])
def test_malformed_input_raises_bencode_error(bad: bytes) -> None:
    with pytest.raises(BencodeError):
        decode(bad)


def test_depth_is_bounded() -> None:
    deep = b"l" * (MAX_DEPTH + 2) + b"e" * (MAX_DEPTH + 2)
    with pytest.raises(BencodeError):
        decode(deep)


def test_unencodable_values_raise_bencode_error() -> None:
    for value in (True, 1.5, None, {1: "x"}, {"a": object()}):
        with pytest.raises(BencodeError):
            encode(value)
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(BencodeError):
        encode(loop)


def test_random_bytes_never_raise_anything_else() -> None:
    rng = random.Random(15)
    alphabet = b"ilde0123456789:-x"
    for _ in range(20000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        try:
            decode(data)
        except BencodeError:
            pass
