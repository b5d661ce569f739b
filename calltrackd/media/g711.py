"""G.711 µ-law and A-law (ITU-T G.711), as lookup tables: no `audioop` (deprecated in
Python 3.11, gone in 3.13).

Decoding goes through `bytes.translate` (C speed): one table gives the low bytes of the
16-bit little-endian samples, another the high bytes, and the caller interleaves them.
The encoders are for tests and tone generators, not the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["alaw_decode", "alaw_encode", "decode_to_pcm16", "encode", "tables",
           "ulaw_decode", "ulaw_encode"]


def ulaw_decode(code: int) -> int:
    """One µ-law byte → a 16-bit linear sample (-32124..32124)."""
    u = ~code & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return -magnitude if u & 0x80 else magnitude


def alaw_decode(code: int) -> int:
    """One A-law byte → a 16-bit linear sample (-32256..32256)."""
    a = code ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    if exponent == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


def ulaw_encode(sample: int) -> int:
    """A 16-bit linear sample → µ-law (14-bit magnitude, bias 33, clipped at 8159)."""
    pcm = sample >> 2
    sign = 0x80 if pcm < 0 else 0
    magnitude = min(-pcm if pcm < 0 else pcm, 8159) + 0x21
    if magnitude > 0x1FFF:  # the top of the last segment
        return 0x00 if sign else 0x80
    exponent = magnitude.bit_length() - 6
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def alaw_encode(sample: int) -> int:
    """A 16-bit linear sample → A-law (13-bit segments, even bits inverted)."""
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    segment = max(pcm.bit_length() - 5, 0)
    if segment >= 8:
        return 0x7F ^ mask
    mantissa = (pcm >> (segment if segment else 1)) & 0x0F
    return ((segment << 4) | mantissa) ^ mask


def _split(decode: Callable[[int], int]) -> tuple[bytes, bytes]:
    samples = [decode(c) & 0xFFFF for c in range(256)]
    return bytes(s & 0xFF for s in samples), bytes(s >> 8 for s in samples)


_TABLES = {"PCMU": _split(ulaw_decode), "PCMA": _split(alaw_decode)}


def tables(codec: str) -> tuple[bytes, bytes]:
    """(low bytes, high bytes) translation tables of a codec, "PCMU" or "PCMA"."""
    return _TABLES[codec]


def decode_to_pcm16(codec: str, payload: bytes) -> bytes:
    """G.711 bytes → 16-bit little-endian PCM."""
    low, high = _TABLES[codec]
    out = bytearray(2 * len(payload))
    out[0::2] = payload.translate(low)
    out[1::2] = payload.translate(high)
    return bytes(out)


def encode(codec: str, samples: Iterable[int]) -> bytes:
    """16-bit samples → G.711 bytes of `codec`."""
    enc = ulaw_encode if codec == "PCMU" else alaw_encode
    return bytes(enc(s) for s in samples)
