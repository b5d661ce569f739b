"""Mutations of the RFC 4475 torture messages, and what the SIP core does with each.

Shared by the fuzz test (tests/unit/sip/test_fuzz.py, in the default run) and the long
benchmark (tests/bench/fuzz.py). Mutations are cheap on purpose (a few list operations
each): byte flips, inserts of digits, Unicode digits, long numbers and separators, header
lines duplicated or given hostile values, numbers swapped for hostile ones, truncation.
`exercise` feeds one message to everything that reads bytes from the network (the
parser, the stream framer, the transaction layer over UDP and TCP, a dialog built from a
request, a response to it); only `ParseError` may come out.
"""

from __future__ import annotations

import random
import re
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from calltrackd.sip.dialog import Dialog
from calltrackd.sip.endpoint import Address, TransactionLayer
from calltrackd.sip.message import ParseError, Request, StreamFramer, parse_message, response_for

# inserted anywhere, or in place of a number: what int(), str.isdigit() and friends trip on
NUMBERS = [
    b"0", b"00000000000000000000001", b"-1", b"+1", b"1.5", b"1e3", b"0x1F", b"65536",
    b"4294967296", b"99999999999999999999", b"9" * 4301, b"1" * 20000, b" 1", b"1 ",
    # superscripts, Arabic-Indic, fullwidth, mathematical bold, NKo, circled, Roman
    "\u00b2".encode(), "\u00b9\u00b2\u00b3".encode(), "\u0663".encode(), "\uff11".encode(),
    "\U0001d7d7".encode(), "\u07c0".encode(), "1\u00b2".encode(), "\u2466".encode(),
    "\u2167".encode(), b"\xb2", b"\xff",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"<", b">",
    b'"', b"\\", b"@", b"[", b"]", b"/", b"=", b"?", b"%", b"%00", b"\x00", b"\x7f", b"\xc3",
    b"\xed\xa0\x80", "é".encode(), "\ufeff".encode(), b"SIP/2.0", b"SIP/2.0/", b"sip:",
    b"sips:", b"tel:", b"branch=", b";tag=", b";rport", b";received=", b";maddr=", b"[::1]",
    b"[", b"z9hG4bK", b"*", b"Via: ", b"CSeq: ", b"Content-Length: ", b"l: ", b"v: ",
]
VALUES = [
    b"", b" ", b"SIP/2.0/2.0/UDP h", b"SIP/2.0/UDP", b"SIP/2.0/UDP ", b"SIP/2.0/UDP :5060",
    b"SIP/2.0/UDP h:", b"SIP/2.0/UDP h:0", b"SIP/2.0/UDP h:65536",
    "SIP/2.0/UDP h:\uff15\uff10\uff16\uff10".encode(),
    b"SIP/2.0/UDP [::1", b"SIP/2.0/UDP [::1]:x", b"SIP/2.0/UDP h;branch", b"SIP/2.0/UDP h;=x",
    b"SIP / 2.0 / UDP h ; branch = z9hG4bK1", b"SIP/3.0/UDP h", b"SIP/2.0/ h", b"SIP/2.0/UDP h,",
    b",", b",,,", b"1", b"1 ", b" INVITE", "\u00b2 INVITE".encode(), b"99999999999999999999 INVITE",
    b"9" * 5000 + b" INVITE", b"1 INVITE extra", b"-1 INVITE", "\u0663".encode(), b"9" * 5000,
    b"<sip:a@b", b"<>", b"<sip:>", b"sip:", b"\"unterminated <sip:a@b>", b"<sip:a@b>;tag",
    b"<sip:a@b>;tag=", b"<sip:a@b> junk", b"<sip:a@[::1>", "<sip:a@b:\u0663>".encode(),
    b"<sip:a@b:99999999999999999999>", b"*", b"<sip:a@b>;q=", b"Digest", b"Digest realm=",
    b'Digest realm="x", nonce="', b"Digest ,,,=,=", b"\x00\x00", b"\xff\xfe",
]


def _lines(data: bytes) -> list[tuple[int, int, int]]:
    """(start, colon, end) of every header line of the head (start line excluded)."""
    head_end = data.find(b"\r\n\r\n")
    head_end = len(data) if head_end < 0 else head_end
    out = []
    pos = data.find(b"\r\n") + 2
    while 2 <= pos < head_end:
        end = data.find(b"\r\n", pos)
        end = head_end if end < 0 or end > head_end else end
        colon = data.find(b":", pos, end)
        if colon > pos:
            out.append((pos, colon, end))
        pos = end + 2
    return out


_DIGITS = re.compile(rb"[0-9]+")


@dataclass(frozen=True)
class Seed:
    data: bytes
    lines: list[tuple[int, int, int]]  # header lines
    numbers: list[tuple[int, int]]  # digit runs


def seeds(messages: list[bytes]) -> list[Seed]:
    return [Seed(m, _lines(m), [x.span() for x in _DIGITS.finditer(m)]) for m in messages]


def mutate(rng: random.Random, seed: Seed) -> bytes:
    """One mutant: a structural change on the seed (its spans are known), then 0-3 byte
    level ones anywhere."""
    data = seed.data
    op = rng.randrange(6)
    if op == 0 and seed.numbers:
        start, end = rng.choice(seed.numbers)
        data = data[:start] + rng.choice(NUMBERS) + data[end:]
    elif op == 1 and seed.lines:
        start, colon, end = rng.choice(seed.lines)
        data = data[:colon + 1] + b" " + rng.choice(VALUES) + data[end:]
    elif op == 2 and seed.lines:
        start, _, end = rng.choice(seed.lines)
        line = data[start:end + 2]
        at = rng.choice(seed.lines)[0]
        data = data[:at] + line * rng.randint(1, 3) + data[at:]
    elif op == 3 and seed.lines:
        start, _, end = rng.choice(seed.lines)
        data = data[:start] + data[end + 2:]  # a header line removed
    elif op == 4:
        data = data[:rng.randrange(len(data) + 1)]  # truncated
    buf = bytearray(data)
    for _ in range(rng.randrange(4)):
        pos = rng.randrange(len(buf) + 1)
        kind = rng.randrange(5)
        if kind == 0 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif kind == 1:
            buf[pos:pos] = rng.choice(NUMBERS)
        elif kind == 2:
            buf[pos:pos] = rng.choice(TOKENS)
        elif kind == 3:
            del buf[pos:pos + rng.randint(1, 16)]
        else:
            buf[pos:pos] = rng.choice(VALUES)
    return bytes(buf)


UDP = Address("udp", "192.0.2.7", 5071)
TCP = Address("tcp", "192.0.2.8", 40001)


class Target:
    """Everything that reads one message. A fresh transaction layer now and then, so the
    server transactions the mutants create do not pile up."""

    def __init__(self) -> None:
        self.layer = TransactionLayer()
        self.fed = 0

    def exercise(self, data: bytes) -> None:
        self.fed += 1
        if self.fed % 2000 == 0:
            self.layer = TransactionLayer()
        try:
            msg = parse_message(data)
        except ParseError:
            msg = None
        if msg is not None:
            msg.to_bytes()
            if isinstance(msg, Request):
                Dialog.uas(msg, "ourtag").request("BYE", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx")
                response_for(msg, 400).to_bytes()
        # a stream: the framer cuts it (in two reads), the layer takes what it cut; a
        # datagram goes to the layer as it is (each mutant takes one way, by turns)
        framed = [data]
        if self.fed % 2:
            try:
                framer = StreamFramer()
                framed = framer.feed(data[:40]) + framer.feed(data[40:])
            except ParseError:
                framed = []
        now = float(self.fed)
        for chunk in framed:
            self.layer.receive(chunk, TCP if self.fed % 2 else UDP, now)
        self.layer.handle_timer(now + 64.0)
        self.layer.transmits()


def _where(exc: BaseException) -> str:
    """The innermost calltrackd frame an exception came from: `message.py:612 ValueError`."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "calltrackd" in f.filename]
    last = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno} {type(exc).__name__}"


@dataclass
class Result:
    mutations: int = 0
    escaped: Counter[str] = field(default_factory=Counter)  # where -> count
    examples: dict[str, bytes] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(self.escaped.values())


def run(messages: list[bytes], count: int, seed: int,
        on_progress: Callable[[int], None] | None = None) -> Result:
    rng = random.Random(seed)
    pool = seeds(messages)
    target = Target()
    result = Result()
    for i in range(count):
        data = mutate(rng, rng.choice(pool))
        try:
            target.exercise(data)
        except Exception as exc:  # the finding (the parser's own ParseErrors are caught)
            where = _where(exc)
            result.escaped[where] += 1
            result.examples.setdefault(where, data)
        result.mutations += 1
        if on_progress is not None and (i + 1) % 100_000 == 0:
            on_progress(i + 1)
    return result


def torture_messages() -> Iterator[bytes]:
    from tests.unit.sip.test_torture import TORTURE

    for case in TORTURE.values():
        yield case.data
