"""RFC 4475 torture messages (reconstructed from the RFC's §3.1.1 and §3.1.2; bodies and
long values shortened where the RFC's point does not depend on them).

Valid ones parse and their key fields come out right; invalid ones raise ParseError
with a 4xx/5xx status (with the partial request when a response can be formed) or, where
the RFC says a UAS answers them with an error rather than failing the parse, parse and
are answered by the engine (noted per case). Nothing ever raises anything else.
"""

from __future__ import annotations

import random

import pytest

from calltrackd.sip.message import ParseError, Request, Response, StreamFramer, parse_message


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


WSINV = crlf("""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

INTMETH = crlf("""!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb
Content-Length: 0

""".encode("latin-1").decode("utf-8", "surrogateescape"))

ESC01 = crlf("""INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

LWSDISP = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""")

SEMIURI = crlf("""OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

""")

TRANSPORTS = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

""")

UNREASON = crlf("""SIP/2.0 200 = 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c - \xd0\xbf\xd1\x80\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe\xd0\xb5
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.198
s=-
c=IN IP4 192.0.2.198
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""".encode("latin-1").decode("utf-8", "surrogateescape"))

NOREASON = crlf("""SIP/2.0 100 
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

VALID = {
    "wsinv": (WSINV, "wsinv.ndaksdj@192.0.2.1", (9, "INVITE"), "390skdjuw"),
    "intmeth": (INTMETH, None, (139122385, "!interesting-Method0123456789_*+`.%indeed'~"),
                "z9hG4bK-.!%66*_+`'~"),
    "esc01": (ESC01, "esc01.239409asdfakjkn23onasd0-3234", (234234, "INVITE"), "z9hG4bKkdjuw"),
    "lwsdisp": (LWSDISP, "lwsdisp.1234abcd@funky.example.com", (60, "OPTIONS"), "z9hG4bKkdjuw"),
    "semiuri": (SEMIURI, "semiuri.0ha0isndaksdj", (8, "OPTIONS"), "z9hG4bKkdjuw"),
    "transports": (TRANSPORTS, "transports.kijh4akdnaqjkwendsasfdj", (60, "OPTIONS"),
                   "z9hG4bKkdjuw"),
    "unreason": (UNREASON, "unreason.1234ksdfak3j2erwedfsASdf", (35, "INVITE"),
                 "z9hG4bK1324923"),
    "noreason": (NOREASON, "noreason.asndj203insdf99223ndf", (35, "INVITE"),
                 "z9hG4bK2398ndaoe"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_messages_parse(name: str) -> None:
    data, call_id, cseq, branch = VALID[name]
    msg = parse_message(data)
    if call_id is not None:
        assert msg.call_id == call_id
    assert msg.cseq == cseq
    assert msg.top_via.branch == branch


def test_wsinv_details() -> None:
    msg = parse_message(WSINV)
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.headers.get("max-forwards") == "0068"
    assert len(msg.body) == 150
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert msg.vias[2].branch == "z9hG4bK30239"
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"


def test_responses_with_odd_reasons() -> None:
    r = parse_message(UNREASON)
    assert isinstance(r, Response) and r.status == 200 and len(r.body) == 154
    r = parse_message(NOREASON)
    assert isinstance(r, Response) and r.status == 100


def inv(head: str, body: str = "") -> bytes:
    return crlf(head + "\n\n" + body)


BASE = """Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: <sip:caller@example.com>;tag=3342436
To: <sip:user@example.com>
Call-ID: {cid}
CSeq: 8 INVITE"""

INVALID: dict[str, tuple[bytes, int, bool]] = {
    # name: (message, status, partial request available for a response)
    "badinv01 (unterminated quote in display name)": (inv(
        "INVITE sip:user@example.com SIP/2.0\n" + BASE.format(cid="badinv01").replace(
            'From: <sip:caller@example.com>', 'From: "Bell, Alexander <sip:a.g.bell@bell-tel.com>')
        + "\nl: 0"), 400, True),
    "clerr (Content-Length larger than the body)": (inv(
        "INVITE sip:user@example.com SIP/2.0\n" + BASE.format(cid="clerr") +
        "\nContent-Type: application/sdp\nContent-Length: 9999", "v=0\n"), 400, True),
    "scalar02 (negative Content-Length)": (inv(
        "INVITE sip:user@example.com SIP/2.0\n" + BASE.format(cid="scalar02") +
        "\nContent-Length: -999", "v=0\n"), 400, True),
    "scalarlg (CSeq number too large)": (inv(
        "INVITE sip:user@example.com SIP/2.0\n" + BASE.format(cid="scalarlg").replace(
            "CSeq: 8 INVITE", "CSeq: 36893488147419103232 INVITE") + "\nl: 0"), 400, True),
    "ltgtruri (<> around the Request-URI)": (inv(
        "INVITE <sip:user@example.com> SIP/2.0\n" + BASE.format(cid="ltgtruri") + "\nl: 0"),
        400, True),
    "lwsruri (spaces inside the Request-URI)": (inv(
        "INVITE sip:user@example.com; lr SIP/2.0\n" + BASE.format(cid="lwsruri") + "\nl: 0"),
        400, False),
    "lwsstart (two spaces after the method)": (inv(
        "INVITE  sip:user@example.com  SIP/2.0\n" + BASE.format(cid="lwsstart") + "\nl: 0"),
        400, False),
    "escruri (unescaped space in the user part)": (inv(
        "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\n" +
        BASE.format(cid="escruri").replace("To: <sip:user@example.com>",
                                           "To: sip:user@example.com?Route=<sip:x> x") +
        "\nl: 0"), 400, True),
    "badvers (SIP/7.0)": (inv(
        "OPTIONS sip:t.watson@example.org SIP/7.0\n" + BASE.format(cid="badvers").replace(
            "CSeq: 8 INVITE", "CSeq: 8 OPTIONS") + "\nl: 0"), 505, True),
    "mismatch01 (CSeq method differs)": (inv(
        "OPTIONS sip:user@example.com SIP/2.0\n" + BASE.format(cid="mismatch01") + "\nl: 0"),
        400, True),
    "mismatch02 (unknown method, CSeq differs)": (inv(
        "NEWMETHOD sip:user@example.com SIP/2.0\n" + BASE.format(cid="mismatch02") +
        "\nl: 0"), 400, True),
    "bigcode (status code 4294967301)": (crlf(
        "SIP/2.0 4294967301 better not break the receiver\n" +
        BASE.format(cid="bigcode") + "\nl: 0\n\n"), 400, False),
    "insuf (missing Call-ID, From, Max-Forwards)": (inv(
        "INVITE sip:user@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw"
        "\nTo: <sip:user@example.com>\nCSeq: 8 INVITE\nl: 0"), 400, True),
    "multi01 (two To and two Call-ID)": (inv(
        "INVITE sip:user@company.com SIP/2.0\n" + BASE.format(cid="multi01") +
        "\nTo: sip:other@example.net\nCall-ID: multi01.2\nl: 0"), 400, True),
    "ncl (non-numeric Content-Length)": (inv(
        "INVITE sip:user@example.com SIP/2.0\n" + BASE.format(cid="ncl") +
        "\nContent-Length: five", "v=0\n"), 400, True),
    "novelsp (no space after the colon is fine, but no version at all is not)": (crlf(
        "INVITE sip:user@example.com\n" + BASE.format(cid="novelsp") + "\nl: 0\n\n"),
        400, False),
    "regbadct (Contact with an unquoted comma in a URI param)": (inv(
        "REGISTER sip:example.com SIP/2.0\n" + BASE.format(cid="regbadct").replace(
            "CSeq: 8 INVITE", "CSeq: 8 REGISTER") +
        "\nContact: sip:user@example.com?Route=%3Csip:sip.example.com%3E x\nl: 0"),
        400, True),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_torture_messages_are_rejected_with_a_status(name: str) -> None:
    data, status, partial = INVALID[name]
    with pytest.raises(ParseError) as exc:
        parse_message(data)
    assert exc.value.status == status
    assert (exc.value.partial is not None) == partial, exc.value.reason


def test_unknown_scheme_parses_and_is_left_to_the_ua() -> None:
    """unkscm (§3.1.2.14): syntactically valid; the engine answers it 416."""
    msg = parse_message(inv(
        "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\n" +
        BASE.format(cid="unkscm").replace("CSeq: 8 INVITE", "CSeq: 8 OPTIONS") + "\nl: 0"))
    assert isinstance(msg, Request) and msg.uri.startswith("nobodyKnowsThisScheme:")


def test_random_mutations_raise_only_parse_errors() -> None:
    rng = random.Random(4475)
    seeds = [d for d, *_ in VALID.values()] + [d for d, *_ in INVALID.values()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(data) or 1)
            if op < 0.4 and data:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                data[pos:pos] = bytes(rng.choice([b"\r\n", b":", b";", b"<", b'"', b" ", b","]))
            elif data:
                del data[pos:pos + rng.randint(1, 20)]
        try:
            msg = parse_message(bytes(data))
            msg.to_bytes()
        except ParseError:
            pass
        framer = StreamFramer()
        try:
            for chunk in (bytes(data[:50]), bytes(data[50:])):
                framer.feed(chunk)
        except ParseError:
            pass
