"""Malformed and hostile messages get a 4xx where one can be formed, and never stop the
daemon: after each one it still answers OPTIONS. The RFC 4475 invalid torture messages
(tests/unit/sip/torture/invalid-*.sip, when present) are sent too."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .conftest import Daemon, free_port, start_daemon
from .test_calls import config

HEAD = ("Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{n};rport\r\n"
        "From: <sip:+79161234567@127.0.0.1>;tag=f{n}\r\nTo: <sip:+74990000001@127.0.0.1>\r\n"
        "Call-ID: bad{n}@test\r\nMax-Forwards: 70\r\n")

CASES: dict[str, tuple[str, int | None]] = {
    # name: (message with {port} and {n}, expected status or None when it is dropped)
    "bad version": ("INVITE sip:+74990000001@127.0.0.1 SIP/7.0\r\n" + HEAD +
                    "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", 505),
    "cseq method mismatch": ("INVITE sip:+74990000001@127.0.0.1 SIP/2.0\r\n" + HEAD +
                             "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", 400),
    "body shorter than Content-Length": ("INVITE sip:+74990000001@127.0.0.1 SIP/2.0\r\n" + HEAD +
                                         "CSeq: 1 INVITE\r\nContent-Length: 5000\r\n\r\nv=0\r\n",
                                         400),
    "unknown uri scheme": ("INVITE nope:+74990000001 SIP/2.0\r\n" + HEAD +
                           "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", 416),
    "missing Call-ID": ("INVITE sip:+74990000001@127.0.0.1 SIP/2.0\r\n" +
                        HEAD.replace("Call-ID: bad{n}@test\r\n", "") +
                        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", 400),
    "negative Max-Forwards": ("INVITE sip:+74990000001@127.0.0.1 SIP/2.0\r\n" +
                              HEAD.replace("Max-Forwards: 70", "Max-Forwards: -1") +
                              "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", 400),
    "garbage": ("\x00\xff\xfe hello there\r\n\r\n", None),
    "only a request line": ("INVITE sip:a@b SIP/2.0\r\n\r\n", None),
    "too many headers": ("OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + HEAD + "X-Many: 1\r\n" * 300 +
                         "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", None),
    "response without a transaction": ("SIP/2.0 200 OK\r\n" + HEAD +
                                       "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", None),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("malformed")
    sip, http = free_port(), free_port()
    d = start_daemon(tmp, config(sip, http, free_port(), free_port(), "udp"), sip, http)
    yield d
    assert d.stop() == 0


def exchange(daemon: Daemon, data: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", daemon.sip_port))
        try:
            return s.recvfrom(65535)[0]
        except TimeoutError:
            return None


def options_answered(daemon: Daemon) -> bool:
    n = free_port()
    msg = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + HEAD.format(port=9, n=n) +
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    reply = exchange(daemon, msg.encode(), 3.0)
    return reply is not None and reply.startswith(b"SIP/2.0 200 ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_message_gets_4xx_or_is_dropped_and_daemon_lives(daemon: Daemon,
                                                                    name: str) -> None:
    text, expected = CASES[name]
    data = text.format(port=9, n=abs(hash(name)) % 10**8).encode("latin-1")
    reply = exchange(daemon, data)
    if expected is None:
        assert reply is None or reply.startswith(b"SIP/2.0 4") or reply.startswith(b"SIP/2.0 5")
    else:
        assert reply is not None and reply.startswith(f"SIP/2.0 {expected} ".encode()), reply
    assert options_answered(daemon)
    assert daemon.proc.poll() is None


def test_rfc4475_messages_leave_daemon_answering(daemon: Daemon) -> None:
    """Every RFC 4475 torture message of the unit tests, valid and invalid, sent to the
    running daemon: an invalid request gets its 4xx/5xx when one can be formed, and
    the daemon answers OPTIONS after each."""
    from tests.unit.sip.test_torture import INVALID, VALID

    for name, (data, status, partial) in INVALID.items():
        # answer to us: the RFC's Via names a host of its own
        data = data.replace(b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
                            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKkdjuw;rport")
        reply = exchange(daemon, data, 0.5)
        if partial:
            assert reply is not None and reply.startswith(f"SIP/2.0 {status} ".encode()), name
        assert options_answered(daemon), name
    for name, (data, *_rest) in VALID.items():
        exchange(daemon, data, 0.3)  # answered (e.g. 405, 404, 403) or ignored: no crash
        assert options_answered(daemon), name
    assert daemon.proc.poll() is None
