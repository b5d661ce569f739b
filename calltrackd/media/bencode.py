"""Bencoding (BitTorrent BEP 3), the dictionary format of rtpengine's ng protocol.

Pure functions, strict both ways: `encode` takes only int, str, bytes, lists and
dicts with string keys; `decode` takes exactly one value (no trailing bytes), integers
without leading zeros or "-0", string lengths without leading zeros, no duplicate keys,
and nests at most `MAX_DEPTH` deep. Anything else raises `BencodeError`, never another
exception: the bytes come from the network.

Dictionary keys are not required to be sorted on input (rtpengine does not sort them,
its documentation says so); `encode` sorts them, as the format asks.
Strings decode as `bytes`, or as `str` with `text=True` (UTF-8; bytes that are not
UTF-8 survive as surrogates, so encoding the value again gives the same bytes).
"""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["MAX_DEPTH", "BencodeError", "Value", "decode", "encode"]

MAX_DEPTH = 32

Value: TypeAlias = int | bytes | str | list["Value"] | dict[str, "Value"]


class BencodeError(ValueError):
    """Bytes that are not one well-formed bencoded value, or a value bencode cannot hold."""


# --- encode ------------------------------------------------------------------------


def encode(value: object) -> bytes:
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(value, bool):  # an int subclass that bencode has no word for
        raise BencodeError("cannot encode a bool (use 0/1 or a string such as \"yes\")")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        keys: list[tuple[bytes, object]] = []
        for k, v in value.items():
            if isinstance(k, str):
                kb = k.encode("utf-8", "surrogateescape")
            elif isinstance(k, bytes):
                kb = k
            else:
                raise BencodeError(f"dictionary keys must be strings, got {type(k).__name__}")
            keys.append((kb, v))
        keys.sort(key=lambda kv: kv[0])
        out.append(b"d")
        for i, (kb, v) in enumerate(keys):
            if i and keys[i - 1][0] == kb:
                raise BencodeError(f"duplicate key {kb!r}")
            out.append(b"%d:" % len(kb))
            out.append(kb)
            _encode(v, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot encode {type(value).__name__}")


# --- decode ------------------------------------------------------------------------


def decode(data: bytes, *, text: bool = False) -> Value:
    """The one value `data` holds; `text=True` gives strings as `str`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    value, pos = _Decoder(buf, text).value(0, 0)
    if pos != len(buf):
        raise BencodeError(f"trailing data at offset {pos}")
    return value


_DIGITS = frozenset(b"0123456789")


class _Decoder:
    __slots__ = ("buf", "text")

    def __init__(self, buf: bytes, text: bool) -> None:
        self.buf = buf
        self.text = text

    def value(self, pos: int, depth: int) -> tuple[Value, int]:
        buf = self.buf
        if pos >= len(buf):
            raise BencodeError(f"unexpected end at offset {pos}")
        if depth > MAX_DEPTH:
            raise BencodeError(f"nested deeper than {MAX_DEPTH} at offset {pos}")
        lead = buf[pos]
        if lead == 0x69:  # i
            return self.integer(pos)
        if lead in _DIGITS:
            raw, pos = self.string(pos)
            return (self.str_of(raw), pos) if self.text else (raw, pos)
        if lead == 0x6C:  # l
            items: list[Value] = []
            pos += 1
            while True:
                if pos >= len(buf):
                    raise BencodeError("unterminated list")
                if buf[pos] == 0x65:  # e
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if lead == 0x64:  # d
            result: dict[str, Value] = {}
            pos += 1
            while True:
                if pos >= len(buf):
                    raise BencodeError("unterminated dictionary")
                if buf[pos] == 0x65:
                    return result, pos + 1
                if buf[pos] not in _DIGITS:
                    raise BencodeError(f"dictionary key at offset {pos} is not a string")
                raw, pos = self.string(pos)
                key = self.str_of(raw)
                if key in result:
                    raise BencodeError(f"duplicate key {key!r}")
                result[key], pos = self.value(pos, depth + 1)
        raise BencodeError(f"unexpected byte {bytes([lead])!r} at offset {pos}")

    def integer(self, pos: int) -> tuple[int, int]:
        end = self.buf.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        digits = self.buf[pos + 1:end]
        body = digits[1:] if digits.startswith(b"-") else digits
        if (not body or len(body) > 1000 or any(c not in _DIGITS for c in body)
                or (len(body) > 1 and body[0] == 0x30) or digits == b"-0"):
            raise BencodeError(f"bad integer {digits!r} at offset {pos}")
        return int(digits), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        colon = self.buf.find(b":", pos)
        if colon < 0:
            raise BencodeError(f"string length without ':' at offset {pos}")
        digits = self.buf[pos:colon]
        if (not digits or len(digits) > 12 or any(c not in _DIGITS for c in digits)
                or (len(digits) > 1 and digits[0] == 0x30)):
            raise BencodeError(f"bad string length {digits[:20]!r} at offset {pos}")
        start = colon + 1
        end = start + int(digits)
        if end > len(self.buf):
            raise BencodeError(f"string at offset {pos} runs past the end")
        return self.buf[start:end], end

    @staticmethod
    def str_of(raw: bytes) -> str:
        return raw.decode("utf-8", "surrogateescape")
