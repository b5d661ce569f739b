"""Hostile numbers and headers: the parser raises ParseError for each (never ValueError or
IndexError), and the transaction layer answers 400 when the top Via is usable, nothing
when it is not. Each case here is one an earlier parser let through to an exception."""

from __future__ import annotations

import pytest

from calltrackd.sip.endpoint import Address, MalformedMessage, TransactionLayer
from calltrackd.sip.message import ParseError, StreamFramer, Via, parse_message
from calltrackd.sip.uri import SipSyntaxError, SipURI, ascii_number
from tests.unit.sip.test_message import message, options

UNICODE_DIGITS = [
    "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
    "\u0663",  # Arabic-Indic three: int() reads it as 3
    "\uff11",  # fullwidth one
    "1\u00b2",
]
LONG = "9" * 5000  # int() refuses more than 4,300 digits


@pytest.mark.parametrize("text", ["0", "7", "0068", "65535", "0" * 50 + "1"])
def test_ascii_numbers_read_with_leading_zeros(text: str) -> None:
    assert ascii_number(text) == int(text)


@pytest.mark.parametrize("text", ["", " 1", "1 ", "-1", "+1", "1.5", "0x1f", "12345678901",
                                  LONG, *UNICODE_DIGITS])
def test_anything_but_a_short_run_of_ascii_digits_is_no_number(text: str) -> None:
    assert ascii_number(text) is None


def refused(data: bytes) -> ParseError:
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    return exc.value


@pytest.mark.parametrize("value", [*UNICODE_DIGITS, LONG])
def test_unicode_or_endless_digits_are_refused_answerably_wherever_a_number_is_read(
        value: str) -> None:
    cases = [
        message(length=value),
        message("Max-Forwards: " + value, length="0"),
        options().replace(b"CSeq: 1 OPTIONS", f"CSeq: {value} OPTIONS".encode()),
        options().replace(b";branch=z9hG4bKtest1", f";branch=z9hG4bKtest1;rport={value}".encode()),
    ]
    for data in cases:
        assert refused(data).partial is not None, data


@pytest.mark.parametrize("value", [*UNICODE_DIGITS, LONG, "0", "65536", ""])
def test_bad_ports_in_via_and_uris_are_refused(value: str) -> None:
    with pytest.raises(SipSyntaxError):
        Via.parse(f"SIP/2.0/UDP 192.0.2.1:{value};branch=z9hG4bK1")
    with pytest.raises(SipSyntaxError):
        SipURI.parse(f"sip:bob@192.0.2.1:{value}")
    data = options().replace(b"192.0.2.1:5060;", f"192.0.2.1:{value};".encode())
    assert refused(data).partial is not None  # a bad Via is no Via to answer, see below


@pytest.mark.parametrize("code", ["\u00b9\u00b2\u00b3", "\u0661\u0660\u0660", "1\u00b20", "20"])
def test_status_codes_of_other_digits_are_refused(code: str) -> None:
    data = ("SIP/2.0 " + code + " OK\r\n").encode() + options().split(b"\r\n", 1)[1]
    assert refused(data).partial is None  # a response is never answered


@pytest.mark.parametrize("via", ["SIP/2.0/2.0/UDP 192.0.2.1", "SIP/2.0", "SIP/2.0/UDP",
                                 "SIP/2.0/UDP ", "SIP/2.0/UDP192.0.2.1", "SIP/2.0//UDP h",
                                 "SIP/3.0/UDP h", "SIP/2.0/UDP h:", "SIP/2.0/UDP [::1",
                                 "SIP/2.0/UDP [::1]x", "SIP/2.0/UDP [zz]:5060",
                                 "SIP/2.0/UDP h\u00e9st", "SIP/2.0/UDP h;=x"])
def test_malformed_vias_are_syntax_errors(via: str) -> None:
    with pytest.raises(SipSyntaxError):
        Via.parse(via)


def test_via_with_lws_around_the_slashes_and_ipv6_still_parses() -> None:
    via = Via.parse("SIP  /   2.0 /UDP [2001:db8::9]:5062;branch=z9hG4bK1;rport=5062")
    assert (via.transport, via.host, via.port) == ("UDP", "[2001:db8::9]", 5062)


@pytest.mark.parametrize("line", ["Via:", "Via: ", "v: ,", "Via: ,,,"])
def test_empty_via_is_refused_and_not_answered(line: str) -> None:
    data = options().replace(b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtest1",
                             line.encode())
    refused(data)
    layer = TransactionLayer()
    (event,) = layer.receive(data, Address("udp", "192.0.2.1", 5060), 0.0)
    assert isinstance(event, MalformedMessage) and event.answered is None
    assert layer.transmits() == []


def test_request_with_a_usable_via_and_a_bad_number_gets_one_400() -> None:
    layer = TransactionLayer()
    data = message("Max-Forwards: \u00b2", length="0")
    (event,) = layer.receive(data, Address("udp", "192.0.2.1", 5060), 0.0)
    assert isinstance(event, MalformedMessage) and event.answered == 400
    ((out, dest),) = layer.transmits()
    assert out.startswith(b"SIP/2.0 400 ") and dest == Address("udp", "192.0.2.1", 5060)


def test_request_whose_top_via_is_bad_gets_no_answer() -> None:
    layer = TransactionLayer()
    data = options().replace(b"SIP/2.0/UDP 192.0.2.1:5060", b"SIP/2.0/2.0/UDP 192.0.2.1:5060")
    (event,) = layer.receive(data, Address("udp", "192.0.2.1", 5060), 0.0)
    assert isinstance(event, MalformedMessage) and event.answered is None
    assert layer.transmits() == []


def test_bare_cr_inside_a_header_is_refused() -> None:
    """A lone CR copied into a forwarded header could end a line at the next hop."""
    assert refused(options("Subject: hi\rX-Injected: 1")).partial is not None


def test_two_max_forwards_are_refused() -> None:
    assert refused(message("Max-Forwards: 70", "Max-Forwards: 1", length="0")).partial


@pytest.mark.parametrize("value", [*UNICODE_DIGITS, LONG, "1\u00b2"])
def test_stream_framer_refuses_other_digits_in_content_length(value: str) -> None:
    with pytest.raises(ParseError):
        StreamFramer().feed(message(length=value))


def test_parse_error_reasons_stay_short_whatever_the_peer_sent() -> None:
    exc = refused(options().replace(b"CSeq: 1 OPTIONS", b"CSeq: " + b"x" * 60000))
    assert len(exc.reason) <= 200


@pytest.mark.parametrize("line", ["Record-Route: <sip:p1.example.com;lr", "Route: sip:a b",
                                  "Record-Route: <sip:p1.example.com;lr>, <sip:p2:x;lr>"])
def test_a_route_set_that_does_not_parse_is_refused_answerably(line: str) -> None:
    """Routes are where a dialog's requests go: read when they are sent, so read now."""
    assert refused(options(line)).partial is not None
