"""SIP URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1): parts, defaults, errors,
and that what we write parses back to the same thing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from calltrackd.sip.uri import NameAddr, SipSyntaxError, SipURI, format_params, parse_params


def test_user_host_port_params_and_headers_come_apart() -> None:
    uri = SipURI.parse("sip:alice:secret@Example.COM:5070;transport=TCP;lr?Subject=hi&X=1")
    assert (uri.scheme, uri.user, uri.password) == ("sip", "alice", "secret")
    assert (uri.host, uri.port) == ("example.com", 5070)
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.headers == "Subject=hi&X=1"
    assert uri.transport == "tcp"


def test_escapes_in_the_user_part_are_kept_as_sent() -> None:
    uri = SipURI.parse("sip:%2B7%20499@example.com")
    assert uri.user == "%2B7%20499"
    assert str(uri) == "sip:%2B7%20499@example.com"


def test_user_part_may_hold_question_marks_and_semicolons() -> None:
    uri = SipURI.parse("sip:a?b;c=d@example.com;p=1?h=v")
    assert (uri.user, uri.host, uri.params, uri.headers) == ("a?b;c=d", "example.com",
                                                             {"p": "1"}, "h=v")


def test_no_user_part() -> None:
    uri = SipURI.parse("sip:192.0.2.1;transport=udp")
    assert uri.user is None and uri.host == "192.0.2.1" and uri.port is None


@pytest.mark.parametrize(("text", "host", "bare", "port"), [
    ("sip:[2001:db8::1]", "[2001:db8::1]", "2001:db8::1", None),
    ("sip:bob@[2001:DB8::1]:5080;transport=tcp", "[2001:db8::1]", "2001:db8::1", 5080),
])
def test_ipv6_references(text: str, host: str, bare: str, port: int | None) -> None:
    uri = SipURI.parse(text)
    assert (uri.host, uri.host_bare, uri.port) == (host, bare, port)
    assert SipURI.parse(str(uri)) == uri


def test_default_port_stays_absent_and_transport_follows_the_scheme() -> None:
    assert SipURI.parse("sip:example.com").port is None
    assert SipURI.parse("sip:example.com").transport == "udp"
    sips = SipURI.parse("SIPS:bob@example.com")
    assert sips.scheme == "sips" and sips.transport == "tls" and sips.port is None


def test_parameter_names_are_case_insensitive_and_values_kept() -> None:
    uri = SipURI.parse("sip:a@b;Transport=TLS;MADDR=239.255.255.1;Foo")
    assert uri.params == {"transport": "TLS", "maddr": "239.255.255.1", "foo": None}


def test_tel_and_unknown_schemes_keep_their_text() -> None:
    tel = SipURI.parse("tel:+74990000001;phone-context=example.com")
    assert tel.scheme == "tel" and tel.user == "+74990000001"
    assert tel.params == {"phone-context": "example.com"}
    assert str(tel) == "tel:+74990000001;phone-context=example.com"
    urn = SipURI.parse("urn:service:sos")
    assert urn.opaque == "service:sos" and str(urn) == "urn:service:sos"


@pytest.mark.parametrize("text", [
    "sip:alice@example.com",
    "sips:alice:pw@example.com:5061;transport=tls;lr?Subject=x",
    "sip:+74990000001@192.0.2.1;user=phone",
    "sip:[2001:db8::5]:5060",
])
def test_uri_round_trip(text: str) -> None:
    assert str(SipURI.parse(text)) == text


def test_with_returns_a_changed_copy() -> None:
    uri = SipURI.parse("sip:bob@example.com")
    moved = uri.with_(host="192.0.2.9", port=5080)
    assert str(moved) == "sip:bob@192.0.2.9:5080" and str(uri) == "sip:bob@example.com"


def test_params_parse_and_format() -> None:
    params = parse_params('tag=abc; lr ;q=0.5;x="a;b"')
    assert params == {"tag": "abc", "lr": None, "q": "0.5", "x": '"a;b"'}
    assert format_params(params) == ';tag=abc;lr;q=0.5;x="a;b"'
    with pytest.raises(SipSyntaxError):
        parse_params('x="unterminated')


# -- name-addr / addr-spec ---------------------------------------------------------------


def test_quoted_display_name() -> None:
    addr = NameAddr.parse('"Alice Smith" <sip:alice@example.com>;tag=88')
    assert addr.display == '"Alice Smith"' and addr.tag == "88"
    assert addr.uri.user == "alice"


def test_quoted_display_name_with_escaped_quotes_and_brackets() -> None:
    addr = NameAddr.parse('"A \\"B\\" <C>, D" <sip:x@example.com>')
    assert addr.display == '"A \\"B\\" <C>, D"' and addr.uri.user == "x"


def test_token_display_names_may_be_several_words_or_touch_the_bracket() -> None:
    assert NameAddr.parse("Alice Smith <sip:a@example.com>").display == "Alice Smith"
    assert NameAddr.parse("caller<sip:c@example.com>").display == "caller"
    assert NameAddr.parse("Иван Петров <sip:i@example.com>").display == "Иван Петров"


def test_no_display_name() -> None:
    addr = NameAddr.parse("<sip:bob@example.com;transport=tcp>;expires=60")
    assert addr.display is None
    assert addr.uri.params == {"transport": "tcp"} and addr.params == {"expires": "60"}


def test_addr_spec_parameters_belong_to_the_header() -> None:
    addr = NameAddr.parse("sip:bob@example.com;tag=x1;lr")
    assert addr.uri.params == {} and addr.params == {"tag": "x1", "lr": None}
    assert str(addr) == "<sip:bob@example.com>;tag=x1;lr"


def test_spaces_inside_the_brackets_are_ignored() -> None:
    assert str(NameAddr.parse("< sip:a@example.com >")) == "<sip:a@example.com>"


BAD_URIS = [
    "sip:", "sip:@example.com", "sip:bob@", "sip:bob@exa mple.com", "sip:bob@host:0",
    "sip:bob@host:65536", "sip:bob@host:12x", "sip:[2001:db8::1", "sip:[nocolon]",
    "example.com", "1sip:bob@host", "<sip:bob@host>", "tel:", "sip:bob@host;=v",
]
BAD_ADDRESSES = [
    "", "<sip:a@example.com", "<sip:a@example.com> junk", "sip:a b@example.com", "<>",
    # display names out of grammar: unquoted non-tokens, an unterminated or stray quote
    "Bell, Alexander <sip:a@example.com>", "a@b <sip:a@example.com>",
    '"unterminated <sip:a@example.com>', 'Joe "Q" <sip:a@example.com>',
]


@pytest.mark.parametrize(("parse", "text"), [(SipURI.parse, t) for t in BAD_URIS]
                         + [(NameAddr.parse, t) for t in BAD_ADDRESSES])
def test_malformed_uris_and_addresses_raise_syntax_errors(parse: Callable[[str], object],
                                                          text: str) -> None:
    with pytest.raises(SipSyntaxError):
        parse(text)


@pytest.mark.parametrize("text", [
    '"Alice" <sip:alice@example.com>;tag=1',
    '"Q \\"q\\"" <sips:q@[2001:db8::1]:5061>',
    "Token Name <sip:t@example.com;lr>;expires=30",
    "<tel:+74990000001>",
    "sip:addr-spec@example.com;tag=9",
])
def test_name_addr_round_trip(text: str) -> None:
    addr = NameAddr.parse(text)
    again = NameAddr.parse(str(addr))
    assert again == addr and str(again) == str(addr)


def test_with_tag_leaves_the_parsed_value_alone() -> None:
    addr = NameAddr.parse("<sip:bob@example.com>")
    tagged = addr.with_tag("t1")
    assert tagged.tag == "t1" and addr.tag is None
    assert NameAddr.parse("<sip:bob@example.com>").tag is None
