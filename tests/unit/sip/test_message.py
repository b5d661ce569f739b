"""The message parser and the TCP stream framer: limits, Content-Length, compact and folded
headers, lists, name case, round trips, and framing across reads (RFC 3261 §7, §18.3, §20)."""

from __future__ import annotations

import pytest

from calltrackd.sip.message import (
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    Headers,
    ParseError,
    Request,
    Response,
    StreamFramer,
    Via,
    canonical_name,
    parse_message,
    split_list,
)


def message(*extra: str, body: str = "", start: str = "OPTIONS sip:bob@example.com SIP/2.0",
            length: str | None = None) -> bytes:
    """An OPTIONS with the five required headers, `extra` lines and Content-Length."""
    lines = [
        start,
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtest1",
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>",
        "Call-ID: test-call@192.0.2.1",
        "CSeq: 1 OPTIONS",
        *extra,
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def options(*extra: str, body: str = "") -> bytes:
    return message(*extra, body=body, length=str(len(body.encode())))


# -- size limits -------------------------------------------------------------------------


def test_datagram_over_the_size_limit_is_refused_with_513() -> None:
    big = options("X-Pad: " + "a" * MAX_MESSAGE_SIZE)
    with pytest.raises(ParseError) as exc:
        parse_message(big)
    assert exc.value.status == 513


def test_size_limit_is_the_callers_to_choose() -> None:
    data = options()
    assert parse_message(data, max_size=len(data)).call_id == "test-call@192.0.2.1"
    with pytest.raises(ParseError) as exc:
        parse_message(data, max_size=len(data) - 1)
    assert exc.value.status == 513


def test_too_many_header_lines_is_refused_with_513() -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(options(*["X-Many: 1"] * MAX_HEADERS))
    assert exc.value.status == 513


# -- Content-Length ----------------------------------------------------------------------


def test_missing_content_length_on_udp_takes_the_rest_of_the_datagram() -> None:
    msg = parse_message(message(body="v=0\r\n"))
    assert msg.body == b"v=0\r\n"


def test_missing_content_length_on_tcp_is_refused() -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(message(body="v=0\r\n"), stream=True)
    assert exc.value.status == 400 and exc.value.partial is not None


def test_content_length_larger_than_the_body_is_refused_answerably() -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(message(body="v=0\r\n", length="50"))
    assert exc.value.status == 400
    assert isinstance(exc.value.partial, Request) and exc.value.partial.method == "OPTIONS"


def test_content_length_smaller_than_the_body_cuts_it() -> None:
    msg = parse_message(message(body="v=0\r\nextra", length="5"))
    assert msg.body == b"v=0\r\n"


@pytest.mark.parametrize("value", ["-1", "five", "1.5", ""])
def test_content_length_that_is_no_number_is_refused(value: str) -> None:
    with pytest.raises(ParseError):
        parse_message(message(length=value))


def test_two_different_content_lengths_are_refused_but_equal_ones_pass() -> None:
    with pytest.raises(ParseError):
        parse_message(message("Content-Length: 0", length="3", body="abc"))
    assert parse_message(message("l: 3", length="3", body="abc")).body == b"abc"


def test_serialised_content_length_is_the_body_length() -> None:
    msg = parse_message(options(body="hello"))
    msg.body = b"longer body"
    again = parse_message(msg.to_bytes())
    assert again.headers.get_all("Content-Length") == ["11"] and again.body == b"longer body"


# -- header names ------------------------------------------------------------------------


@pytest.mark.parametrize(("compact", "full"), [
    ("i", "Call-ID"), ("m", "Contact"), ("f", "From"), ("t", "To"), ("v", "Via"),
    ("l", "Content-Length"), ("c", "Content-Type"), ("k", "Supported"), ("s", "Subject"),
    ("e", "Content-Encoding"), ("o", "Event"), ("u", "Allow-Events"), ("r", "Refer-To"),
    ("b", "Referred-By"), ("x", "Session-Expires"),
])
def test_compact_header_names_are_the_long_ones(compact: str, full: str) -> None:
    assert canonical_name(compact) == full
    assert canonical_name(compact.upper()) == full
    headers = Headers([(compact, "value")])
    assert headers.get(full) == "value" and list(headers) == [(full, "value")]


def test_compact_forms_parse_as_the_required_headers() -> None:
    data = (b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
            b"v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc1\r\nf: <sip:a@example.com>;tag=1\r\n"
            b"t: <sip:bob@example.com>\r\ni: compact@x\r\nCSeq: 1 OPTIONS\r\n"
            b"m: <sip:a@192.0.2.1>\r\nc: text/plain\r\nl: 2\r\n\r\nhi")
    msg = parse_message(data)
    assert msg.call_id == "compact@x" and msg.top_via.branch == "z9hG4bKc1"
    assert msg.headers.get("Content-Type") == "text/plain" and msg.body == b"hi"
    assert b"Call-ID: compact@x\r\n" in msg.to_bytes()


@pytest.mark.parametrize("name", ["call-id", "CALL-ID", "cAlL-iD", "Call-Id"])
def test_header_names_match_whatever_their_case(name: str) -> None:
    msg = parse_message(options().replace(b"Call-ID:", name.encode() + b":"))
    assert msg.call_id == "test-call@192.0.2.1"
    assert msg.to_bytes().count(b"\r\nCall-ID: ") == 1


def test_special_cased_names_are_written_the_usual_way() -> None:
    assert [canonical_name(n) for n in ("cseq", "www-authenticate", "x-custom-header")] == [
        "CSeq", "WWW-Authenticate", "X-Custom-Header"]


def test_space_before_the_colon_is_allowed_but_a_bad_name_is_not() -> None:
    assert parse_message(options("Subject   : hi")).headers.get("Subject") == "hi"
    for bad in ("Bad Name: x", "Bad<Name: x", "no colon here"):
        with pytest.raises(ParseError):
            parse_message(options(bad))


# -- folding -----------------------------------------------------------------------------


def test_folded_lines_join_with_one_space() -> None:
    msg = parse_message(options("Subject: first\r\n   second\r\n\tthird"))
    assert msg.headers.get("Subject") == "first second third"


def test_folded_required_header_still_reads() -> None:
    msg = parse_message(options().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1\r\n OPTIONS"))
    assert msg.cseq == (1, "OPTIONS")


def test_continuation_before_any_header_is_refused() -> None:
    with pytest.raises(ParseError):
        parse_message(b"OPTIONS sip:bob@example.com SIP/2.0\r\n folded\r\n\r\n")


# -- list headers ------------------------------------------------------------------------


def test_list_header_values_split_at_commas_outside_quotes_and_brackets() -> None:
    msg = parse_message(options(
        'Contact: "Doe, John" <sip:j@example.com;x=a,b>;q=0.5, <sip:k@example.com>',
        "Contact: sip:l@example.com"))
    assert msg.headers.values("Contact") == [
        '"Doe, John" <sip:j@example.com;x=a,b>;q=0.5', "<sip:k@example.com>",
        "sip:l@example.com"]
    assert len(msg.headers.get_all("Contact")) == 2


def test_escaped_quote_does_not_end_a_quoted_string_when_splitting() -> None:
    assert split_list('"a \\" , b" <sip:x@y>, <sip:z@w>') == ['"a \\" , b" <sip:x@y>',
                                                              "<sip:z@w>"]


def test_empty_list_elements_are_dropped() -> None:
    assert split_list("INVITE, , ACK,") == ["INVITE", "ACK"]
    assert split_list("  ") == []


def test_vias_in_one_line_and_in_several_come_out_in_order() -> None:
    msg = parse_message(options().replace(
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtest1",
        b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com\r\n"
        b"v: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK3"))
    assert [(v.transport, v.host, v.port) for v in msg.vias] == [
        ("UDP", "a.example.com", None), ("TCP", "b.example.com", None),
        ("TLS", "[2001:db8::1]", 5061)]


def test_pop_first_value_takes_the_top_via_of_a_combined_line() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2")])
    assert headers.pop_first_value("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert headers.get_all("Via") == ["SIP/2.0/UDP b;branch=z9hG4bK2"]


def test_non_list_headers_keep_their_commas() -> None:
    msg = parse_message(options("Date: Sat, 13 Nov 2010 23:29:00 GMT",
                                'WWW-Authenticate: Digest realm="a", nonce="b"'))
    assert msg.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert msg.headers.get("WWW-Authenticate") == 'Digest realm="a", nonce="b"'


# -- Via ---------------------------------------------------------------------------------


def test_via_parameters_and_ports() -> None:
    via = Via.parse("SIP/2.0/udp Host.Example.com:5070 ; branch=z9hG4bKx ;rport;received=1.2.3.4")
    assert (via.transport, via.host, via.port) == ("UDP", "host.example.com", 5070)
    assert via.params == {"branch": "z9hG4bKx", "rport": None, "received": "1.2.3.4"}
    assert str(via) == "SIP/2.0/UDP host.example.com:5070;branch=z9hG4bKx;rport;received=1.2.3.4"


@pytest.mark.parametrize("text", ["SIP/3.0/UDP a", "SIP/2.0/UDP", "SIP/2.0/UDP a:0",
                                  "SIP/2.0/UDP a:99999", "SIP/2.0/UDP [::1", "HTTP/1.1 a"])
def test_bad_via_makes_the_message_bad(text: str) -> None:
    data = options().replace(b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtest1", text.encode())
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert exc.value.status == 400


def test_a_bad_via_read_later_raises_parse_error() -> None:
    req = Request("OPTIONS", "sip:a@b", Headers([("Via", "SIP/9.9/UDP nowhere")]))
    with pytest.raises(ParseError):
        req.top_via  # noqa: B018


# -- start lines -------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["SIP/2.0 99 Too Low", "SIP/2.0 700 Too High",
                                   "SIP/2.0 2000 Four Digits", "SIP/2.0 abc Letters",
                                   "SIP/1.0 200 OK"])
def test_response_with_a_bad_status_line_is_refused_unanswered(start: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(options().replace(b"OPTIONS sip:bob@example.com SIP/2.0", start.encode()))
    assert exc.value.partial is None


def test_response_reason_may_hold_spaces_or_be_missing() -> None:
    resp = parse_message(options().replace(b"OPTIONS sip:bob@example.com SIP/2.0",
                                           b"SIP/2.0 486 Busy  Here"))
    assert isinstance(resp, Response) and resp.reason == "Busy  Here"
    resp = parse_message(options().replace(b"OPTIONS sip:bob@example.com SIP/2.0",
                                           b"SIP/2.0 200"))
    assert isinstance(resp, Response) and resp.status == 200 and resp.reason == ""


def test_stray_spaces_in_the_request_line_are_answered_400() -> None:
    for start in ("OPTIONS  sip:bob@example.com SIP/2.0", "OPTIONS sip:bob@example.com SIP/2.0 "):
        with pytest.raises(ParseError) as exc:
            parse_message(options().replace(b"OPTIONS sip:bob@example.com SIP/2.0",
                                            start.encode()))
        assert exc.value.partial is not None and exc.value.partial.method == "OPTIONS"


@pytest.mark.parametrize("start", [b"hello there", b"GET / HTTP/1.1 now",
                                   b"INVITE  sip:a@b  SIP/2.0"])
def test_garbled_request_line_without_the_headers_gets_no_answer(start: bytes) -> None:
    with pytest.raises(ParseError) as exc:
        parse_message(start + b"\r\nX-Only: this\r\n\r\n")
    assert exc.value.partial is None


def test_leading_crlfs_before_a_datagram_are_skipped() -> None:
    assert parse_message(b"\r\n\r\n" + options()).call_id == "test-call@192.0.2.1"


def test_bare_lf_line_ends_are_tolerated() -> None:
    msg = parse_message(options(body="x").replace(b"\r\n", b"\n"))
    assert msg.call_id == "test-call@192.0.2.1" and msg.body == b"x"


def test_cseq_and_max_forwards_ranges() -> None:
    assert parse_message(options().replace(b"CSeq: 1 ", b"CSeq: 2147483647 ")).cseq[0] == 2**31 - 1
    for cseq in (b"CSeq: 2147483648 OPTIONS", b"CSeq: OPTIONS", b"CSeq: 1"):
        with pytest.raises(ParseError):
            parse_message(options().replace(b"CSeq: 1 OPTIONS", cseq))
    for mf in ("Max-Forwards: 256", "Max-Forwards: -1", "Max-Forwards: x"):
        with pytest.raises(ParseError):
            parse_message(options(mf))


def test_round_trip_keeps_order_values_and_body() -> None:
    data = options("Max-Forwards: 70", "X-Odd: ;;,,", "Contact: <sip:a@192.0.2.1>",
                   body="v=0\r\n")
    msg = parse_message(data)
    assert msg.to_bytes() == data


# -- the stream framer (RFC 3261 §18.3) --------------------------------------------------


def test_message_split_across_reads_is_whole_once_all_arrived() -> None:
    data = options(body="v=0\r\n")
    framer = StreamFramer()
    for i in range(len(data) - 1):
        assert framer.feed(data[i:i + 1]) == []
    assert framer.feed(data[-1:]) == [data]


def test_several_messages_in_one_read_come_out_in_order() -> None:
    one, two = options(body="first"), options(body="second")
    framer = StreamFramer()
    out = framer.feed(one + two + two[:10])
    assert out == [one, two]
    assert framer.feed(two[10:]) == [two]


def test_keepalive_crlfs_between_messages_are_skipped() -> None:
    """RFC 5626 §4.4.1: a client pings with CRLFCRLF and the server pongs with CRLF; the
    framer drops both wherever they fall, even split across reads."""
    data = options()
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n" + data + b"\r\n") == [data]
    assert framer.feed(b"\r\n\r\n" + data) == [data]


def test_compact_and_spaced_content_length_frame_the_body() -> None:
    data = message("l : 4", body="abcdNEXT")
    assert StreamFramer().feed(data) == [data[:-4]]


@pytest.mark.parametrize("header", ["Content-Length: -5", "Content-Length: five",
                                    "Content-Length: 3\r\nContent-Length: 4"])
def test_bad_content_length_on_a_stream_loses_the_framing(header: str) -> None:
    with pytest.raises(ParseError):
        StreamFramer().feed(message(header, body="abcd"))


def test_stream_message_without_content_length_loses_the_framing() -> None:
    with pytest.raises(ParseError):
        StreamFramer().feed(message())


def test_stream_header_section_or_message_over_the_limit_is_513() -> None:
    with pytest.raises(ParseError) as exc:
        StreamFramer(max_size=100).feed(b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 200)
    assert exc.value.status == 513
    with pytest.raises(ParseError) as exc:
        StreamFramer(max_size=300).feed(message(length="5000"))
    assert exc.value.status == 513


def test_framed_messages_parse_as_stream_messages() -> None:
    data = options(body="v=0\r\n")
    (framed,) = StreamFramer().feed(data)
    msg = parse_message(framed, stream=True)
    assert msg.body == b"v=0\r\n"
