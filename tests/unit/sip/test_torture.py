"""RFC 4475 torture messages, every one of §3.1.1-§3.4, under the RFC's names.

The texts follow the RFC octet for octet as far as a Python literal shows them: CRLF line
ends, the odd whitespace (trailing spaces included), escapes, the raw control characters
and UTF-8 of intmeth and unreason, and the binary S/MIME part of mpart01. Above each one:
what the RFC expects an element to do, and what this B2BUA does.

`rejected` is the status the parser's ParseError carries (None: the message parses);
`answerable` says the error carries the request, so the transaction layer can answer it;
`answer` is what the running daemon sends back over UDP (None: nothing, ANY: a response
whose status this file does not pin, see its comment). tests/integration/test_malformed.py
sends every one of these to the daemon.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from calltrackd.sip.endpoint import Address, MalformedMessage, RequestReceived, TransactionLayer
from calltrackd.sip.message import ParseError, Request, Response, StreamFramer, parse_message
from calltrackd.sip.uri import NameAddr, SipURI


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


ANY = 0  # `answer`: some final response, status not pinned here


@dataclass(frozen=True)
class Torture:
    section: str
    data: bytes
    rejected: int | None = None
    answerable: bool = False
    answer: int | None = None


SDP_150 = """v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"""


def sdp(host: str, t: str = "0 0") -> str:
    """The SDP body most torture messages carry, for the host they name."""
    return SDP_150.replace("192.0.2.1", host).replace("t=0 0", f"t={t}")


# -- §3.1.1 valid messages ---------------------------------------------------------------

# §3.1.1.1 A short tortuous INVITE: folding, LWS everywhere, escaped quotes, an empty
# Subject, compact and long names for one header, leading zeros. Every element treats it as
# well formed. Ours: parses; its To carries a tag, so to a UAS it is a request inside a
# dialog it does not know: 481 (RFC 3261 §12.2.2).
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

# §3.1.1.2 Wide range of valid characters: a token method with every non-alphanumeric
# token character (% is no escape there), a URI user with '?' and a password, a quoted
# NUL/BEL/DEL, multi-token display name, UTF-8 parameter and header values. A UAS answers
# 501 listing what it understands. Ours: 501 with Allow.
INTMETH = crlf("""!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="работающий";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\ufeff大停電
Content-Length: 0

""")

# §3.1.1.3 Valid use of the % escaping mechanism in Request-URI, To, From and Contact URI
# parameters. Parsers accept it; "name" has the value "value%41" (no recursive unescaping).
# Ours: parses, keeps the URI text as sent; 404 (no such DID).
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

""" + SDP_150)

# §3.1.1.4 Escaped nulls in URIs: well formed; the user parts must not be cut short at the
# NUL, and the REGISTER carries two distinct contacts. Ours: parses; 405 (not a registrar).
ESCNULL = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

""")

# §3.1.1.5 Use of % when it is not an escape: the method RE%47IST%45R is unknown (not
# REGISTER), the display names are "%Z%45", C%6Fntact is an extension header, so two
# Contact values, not three. An endpoint rejects it with 501. Ours: 501 with Allow.
ESC02 = crlf("""RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

""")

# §3.1.1.6 No LWS between display name and "<": valid. Ours: OPTIONS answered 200.
LWSDISP = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# §3.1.1.7 Long values in header fields: a long display name, URI parameters, tag,
# Call-ID, an unknown long header, 34 Via values under every case of "Via"/"v". Valid.
# Ours: parses, all 34 Vias kept in order; 404 (no such DID).
_LONG = "long" * 20
LONGREQ = crlf(f"""INVITE sip:user@example.com SIP/2.0
To: "I have a user name of {"extreme" * 10} proportion"<sip:user@example.com:6000;unknownparam1=very{_LONG}value;longparam{"name" * 25}=shortvalue;very{_LONG}{"long" * 5}ParameterNameWithNoValue>
F: sip:{"amazinglylongcallername" * 5}@example.net;tag={"1298" * 40}424;unknownheaderparam{"name" * 20}=unknowheaderparam{"value" * 15};unknownValuelessparam{"name" * 10}
Call-ID: longreq.one{"really" * 20}longcallid
CSeq: 3882340 INVITE
Unknown-{"Long" * 20}-Name: unknown-{_LONG}-value; unknown-{_LONG}-parameter-name = unknown-{_LONG}-parameter-value
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
""" + "".join(f"Via: SIP/2.0/TCP sip{n}.example.com\n" for n in range(16, 0, -1)) + f"""Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very{"long" * 50}branchvalue
Max-Forwards: 70
Contact: <sip:{"amazinglylongcallername" * 5}@host5.example.net>
Content-Type: application/sdp
l: 150

""" + SDP_150)

# §3.1.1.8 Extra trailing octets in a UDP datagram: a REGISTER with Content-Length 0 and
# then octets that look like an INVITE. Per RFC 3261 §18.3 they are noise: handle the
# REGISTER, ignore the INVITE. Ours: the REGISTER alone is parsed; 405.
DBLREQ = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

""" + sdp("192.0.2.15").replace("m=video", "m =video"))

# §3.1.1.9 Semicolon-separated parameters in the URI user part: the user is
# "user;par=u%40example.net", not a parameter. Valid. Ours: OPTIONS answered 200.
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

# §3.1.1.10 Varied and unknown transport types in Via (SCTP, TLS, UNKNOWN). Valid; an
# element answers it as any OPTIONS. Ours: 200.
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

# The PKCS #7 signature of mpart01's second part: 342 octets of binary, NULs included.
_MPART_SIG = base64.b64decode(
    "MIIBUgYJKoZIhvcNAQcCoIIBQzCCAT8CAQExCTAHBgUrDgMCGjALBgkqhkiG9w0BBwExggEgMIIB"
    "HAIBATB8MHAxCzAJBgNVBAYTAlVTMRMwEQYDVQQIEwpDYWxpZm9ybmlhMREwDwYDVQQHEwhTYW4g"
    "Sm9zZTEOMAwGA1UEChMFc2lwaXQxKTAnBgNVBAsTIFNpcGl0IFRlc3QgQ2VydGlmaWNhdGUgQXV0"
    "aG9yaXR5AggBlQBxAjMBEzAHBgUrDgMCGjANBgkqhkiG9w0BAQEFAASBgI70ZvlI8FIt0uWXjp2V"
    "quny/hWgZllxYpLo2iqo2DUKaM7/rjy9K/8Wdd3VZI5ZPdZHKPJiIPfpQXSeMw2aFe2r25PRDEIQ"
    "LntyidKcwMmuLvvHwM/5Fy87An5PwCfhVG3ktqo6uz5mzMtd1sZLg4MUnLjm/xgtlE/le2W8mdAF"
)

# §3.1.1.11 Multipart MIME message with a binary part (Content-Length 553 counts it). A
# parser must take the body as octets. Ours: parses, body intact; 405 (MESSAGE unserved).
MPART01 = crlf("""MESSAGE sip:kumiko@example.org SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

""") + _MPART_SIG + crlf("""
--7a9cbec02ceef655--
""")

# §3.1.1.12 Unusual reason phrase (UTF-8, "*" and "="): valid. Ours: parses; as a response
# matching no transaction it is dropped, nothing sent.
UNREASON = crlf("""SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""" + sdp("192.0.2.198"))

# §3.1.1.13 Empty reason phrase (the SP after the code stays). Valid. Ours: parses;
# dropped (no transaction).
NOREASON = crlf("""SIP/2.0 100 
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# -- §3.1.2 invalid messages -------------------------------------------------------------

# §3.1.2.1 Extraneous header field separators in Via (";;,;,,") and Contact (";;;;").
# Should be answered 400. Ours: 400.
BADINV01 = crlf("""INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""" + sdp("192.0.2.15"))

# §3.1.2.2 Content-Length larger than the message: over UDP, answer 400. Ours: 400.
CLERR = crlf("""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""" + sdp("192.0.2.155"))

# §3.1.2.3 Negative Content-Length: answer 400; on a stream, close the connection.
# Ours: 400 (the framer closes TCP, see test_message.py).
NCL = crlf("""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

""" + sdp("192.0.2.53"))

# §3.1.2.4 Request scalar fields with overlarge values: CSeq beyond 2**32-1 makes it a
# 400 (Max-Forwards 300 and the huge expiries alone could be treated as absent or
# default). Ours: 400 for the CSeq.
SCALAR02 = crlf(f"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 1{"0" * 100}
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

""")

# §3.1.2.5 Response scalar fields with overlarge values (CSeq, Retry-After, a 4-digit
# Warning code): the receiver simply discards it. Ours: ParseError, nothing sent.
SCALARLG = crlf("""SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

""")

# §3.1.2.6 Unterminated quoted string in a display name: answer 400. Ours: 400.
QUOTBAL = crlf("""INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""" + sdp("192.0.2.15"))

# §3.1.2.7 <> enclosing the Request-URI: reasonable always to answer 400 (a liberal
# element may drop the brackets). Ours: 400.
LTGTRURI = crlf("""INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + sdp("192.0.2.5", "3149328700 0"))

# §3.1.2.8 Malformed Request-URI with embedded LWS ("; lr"): answer 400. Ours: 400.
LWSRURI = crlf("""INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + sdp("192.0.2.1", "3149328700 0"))

# §3.1.2.9 Multiple SP between the elements of the start line: acceptable to reject as
# malformed, or to ignore the extra SP (never forwarding them). Ours: 400.
LWSSTART = crlf("""INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + SDP_150)

# §3.1.2.10 SP characters at the end of the Request-Line: acceptable to reject, or to
# ignore them. Ours: 400, as for lwsstart.
TRWS = crlf("""OPTIONS sip:remote-target@example.com SIP/2.0  
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

""")

# §3.1.2.11 Escaped headers in the Request-URI: acceptable to answer 400, or to be liberal
# and ignore them (a proxy must not forward them). Ours: liberal; the B2BUA never copies
# the Request-URI onward (the B leg goes to the tracker's targets), so the headers are
# ignored and the INVITE is routed as any other: 404, no such DID.
ESCRURI = crlf("""INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""" + SDP_150)

# §3.1.2.12 Invalid (non-GMT) time zone in Date: an element shouldn't reject it unless it
# uses Date; a liberal one ignores it. Ours: Date is never read, so it parses; 404.
BADDATE = crlf("""INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + sdp("192.0.2.5"))

# §3.1.2.13 Failure to enclose a name-addr URI with URI headers in <> (Contact): reasonable
# to answer 400; a liberal element may infer the brackets, as here there is no ambiguity.
# Ours: liberal (the URI keeps its headers); the REGISTER then gets 405.
REGBADCT = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

""")

# §3.1.2.14 Spaces within addr-spec ("< sip:... >"): parsers must not break; reasonable to
# answer 400, or to ignore the spaces. Ours: liberal, the spaces are dropped (they never
# reach a message we send); the OPTIONS is answered 200.
BADASPEC = crlf("""OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

""")

# §3.1.2.15 Non-token characters in unquoted display names ("Bell, Alexander"): always
# reasonable to answer 400; an element inferring the quotes must not forward the error.
# Ours: 400, since the B2BUA copies the caller's display name onto the B leg.
BADDN = crlf("""OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

""")

# §3.1.2.16 Unknown protocol version SIP/7.0: answer 505. Ours: 505.
BADVERS = crlf("""OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

""")

# §3.1.2.17 Start-line and CSeq method mismatch: answer 400. Ours: 400.
MISMATCH01 = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

""")

# §3.1.2.18 Unknown method with a CSeq method mismatch: 501 preferred, 400 acceptable.
# Ours: 400 (the mismatch is found while parsing, before the method is looked at).
MISMATCH02 = crlf("""NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
c=IN IP4 192.0.2.1
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""")

# §3.1.2.19 Overlarge response code (4294967301): drop it. Ours: ParseError, nothing sent.
BIGCODE = crlf("""SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""")

# -- §3.2 transaction layer semantics ----------------------------------------------------

# §3.2.1 A branch that is only the magic cookie: parsers must not break; an element may
# answer 400 (statelessly) or fall back to RFC 2543 matching. Ours: parses; the OPTIONS is
# answered 200 (the transaction layer takes the bare cookie as the branch).
BADBRANCH = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

""")

# -- §3.3 application layer semantics ----------------------------------------------------

# §3.3.1 Missing Call-ID, From and To: must not break; ideally answer 400. Ours: 400.
INSUF = crlf("""INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""" + sdp("192.0.2.95"))

# §3.3.2 Request-URI with an unknown scheme: answer 416. Ours: parses; the engine 416s.
UNKSCM = crlf("""OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# §3.3.3 Request-URI with a known but atypical scheme (soap.beep): must parse; 416 when the
# element never serves that scheme. Ours: 416.
NOVELSC = crlf("""OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""")

# §3.3.4 Unknown URI schemes in To, From and Contact: syntactically valid, parsers must not
# fail; a registrar answers 400 (an AOR must be sip/sips). Ours: parses; 405 (not a
# registrar).
UNKSM2 = crlf("""REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

""")

# §3.3.5 Unknown Proxy-Require and Require values: a UAS answers 420 with Unsupported. Ours:
# parses; 420 naming the Require values (we are the UAS of an OPTIONS; Proxy-Require is a
# proxy's business, not a B2BUA's).
BEXT01 = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

""")

# §3.3.6 Unknown Content-Type: a UAS answers 415, a proxy forwards. Ours: routing comes
# first and the DID is nobody's: 404.
INVUT = crlf("""INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
""")

# §3.3.7 Unknown authorization scheme: a registrar answers 401. Ours: 405 (no registrar).
REGAUT01 = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

""")

# §3.3.8 Multiple values in single-value fields (Call-ID, CSeq, From, To, Max-Forwards):
# answer 400. Ours: 400.
MULTI01 = crlf("""INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""" + sdp("192.0.2.25") + "\n")

# §3.3.9 Multiple differing Content-Length values: answer 400 over UDP; on a stream the
# framing is lost and the connection should close. Ours: 400 (the framer refuses it).
MCL01 = crlf("""OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
""")

# §3.3.10 200 OK with a broadcast address in its second Via: well formed, an endpoint
# discards it (a proxy must not forward it). Ours: parses; no transaction, dropped.
BCAST = crlf("""SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

""" + sdp("192.0.2.198"))

# §3.3.11 Max-Forwards of zero: legal; a proxy answers 483, a UAS processes it normally.
# Ours: the OPTIONS is ours to answer, 200 (an INVITE would get 483).
ZEROMF = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

""")

# §3.3.12 Contact in addr-spec form with a parameter: the parameter belongs to the header
# field value, not to the URI. Ours: parses that way; 405.
CPARAM01 = crlf("""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

""")

# §3.3.13 The same parameter inside <>: it belongs to the URI. Ours: parses that way; 405.
CPARAM02 = crlf("""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

""")

# §3.3.14 A Contact URI with an escaped header, properly in <>: valid; a registrar stores
# it. Ours: parses; 405.
REGESCRT = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

""")

# §3.3.15 An INVITE whose Accept offers nothing the UAS can send (text/nobodyKnowsThis):
# a UAS answers 406. Ours: routing comes first, 404 (no such DID).
SDP01 = crlf("""INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

""" + sdp("192.0.2.5"))

# -- §3.4 backward compatibility ---------------------------------------------------------

# §3.4.1 An INVITE in RFC 2543 syntax: no branch, no From tag, no Max-Forwards, no
# Content-Length (the body is the rest of the datagram). Should be accepted. Ours: parses
# over UDP (refused on a stream, where Content-Length is required); 404.
INV2543 = crlf("""INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
""")


TORTURE: dict[str, Torture] = {
    "wsinv": Torture("3.1.1.1", WSINV, answer=481),
    "intmeth": Torture("3.1.1.2", INTMETH, answer=501),
    "esc01": Torture("3.1.1.3", ESC01, answer=404),
    "escnull": Torture("3.1.1.4", ESCNULL, answer=405),
    "esc02": Torture("3.1.1.5", ESC02, answer=501),
    "lwsdisp": Torture("3.1.1.6", LWSDISP, answer=200),
    "longreq": Torture("3.1.1.7", LONGREQ, answer=404),
    "dblreq": Torture("3.1.1.8", DBLREQ, answer=405),
    "semiuri": Torture("3.1.1.9", SEMIURI, answer=200),
    "transports": Torture("3.1.1.10", TRANSPORTS, answer=200),
    "mpart01": Torture("3.1.1.11", MPART01, answer=405),
    "unreason": Torture("3.1.1.12", UNREASON),
    "noreason": Torture("3.1.1.13", NOREASON),
    "badinv01": Torture("3.1.2.1", BADINV01, 400, True, 400),
    "clerr": Torture("3.1.2.2", CLERR, 400, True, 400),
    "ncl": Torture("3.1.2.3", NCL, 400, True, 400),
    "scalar02": Torture("3.1.2.4", SCALAR02, 400, True, 400),
    "scalarlg": Torture("3.1.2.5", SCALARLG, 400),
    "quotbal": Torture("3.1.2.6", QUOTBAL, 400, True, 400),
    "ltgtruri": Torture("3.1.2.7", LTGTRURI, 400, True, 400),
    "lwsruri": Torture("3.1.2.8", LWSRURI, 400, True, 400),
    "lwsstart": Torture("3.1.2.9", LWSSTART, 400, True, 400),
    "trws": Torture("3.1.2.10", TRWS, 400, True, 400),
    "escruri": Torture("3.1.2.11", ESCRURI, answer=404),
    "baddate": Torture("3.1.2.12", BADDATE, answer=404),
    "regbadct": Torture("3.1.2.13", REGBADCT, answer=405),
    "badaspec": Torture("3.1.2.14", BADASPEC, answer=200),
    "baddn": Torture("3.1.2.15", BADDN, 400, True, 400),
    "badvers": Torture("3.1.2.16", BADVERS, 505, True, 505),
    "mismatch01": Torture("3.1.2.17", MISMATCH01, 400, True, 400),
    "mismatch02": Torture("3.1.2.18", MISMATCH02, 400, True, 400),
    "bigcode": Torture("3.1.2.19", BIGCODE, 400),
    "badbranch": Torture("3.2.1", BADBRANCH, answer=200),
    "insuf": Torture("3.3.1", INSUF, 400, True, 400),
    "unkscm": Torture("3.3.2", UNKSCM, answer=416),
    "novelsc": Torture("3.3.3", NOVELSC, answer=416),
    "unksm2": Torture("3.3.4", UNKSM2, answer=405),
    "bext01": Torture("3.3.5", BEXT01, answer=420),
    "invut": Torture("3.3.6", INVUT, answer=404),
    "regaut01": Torture("3.3.7", REGAUT01, answer=405),
    "multi01": Torture("3.3.8", MULTI01, 400, True, 400),
    "mcl01": Torture("3.3.9", MCL01, 400, True, 400),
    "bcast": Torture("3.3.10", BCAST),
    "zeromf": Torture("3.3.11", ZEROMF, answer=200),
    "cparam01": Torture("3.3.12", CPARAM01, answer=405),
    "cparam02": Torture("3.3.13", CPARAM02, answer=405),
    "regescrt": Torture("3.3.14", REGESCRT, answer=405),
    "sdp01": Torture("3.3.15", SDP01, answer=404),
    "inv2543": Torture("3.4.1", INV2543, answer=404),
}

VALID = sorted(n for n, t in TORTURE.items() if t.rejected is None)
INVALID = sorted(n for n, t in TORTURE.items() if t.rejected is not None)


def parse(name: str) -> Request | Response:
    return parse_message(TORTURE[name].data)


def request(name: str) -> Request:
    msg = parse(name)
    assert isinstance(msg, Request)
    return msg


def test_all_49_rfc4475_messages_are_here() -> None:
    assert len(TORTURE) == 49


@pytest.mark.parametrize("name", VALID)
def test_valid_torture_message_parses_and_serialises_back(name: str) -> None:
    msg = parse(name)
    again = parse_message(msg.to_bytes())

    def fields(m: Request | Response) -> list[tuple[str, str]]:
        return [(n, v) for n, v in m.headers if n != "Content-Length"]  # recomputed on output

    assert fields(again) == fields(msg)
    assert again.body == msg.body and again.call_id == msg.call_id


@pytest.mark.parametrize("name", INVALID)
def test_invalid_torture_message_is_rejected_with_its_status(name: str) -> None:
    case = TORTURE[name]
    with pytest.raises(ParseError) as exc:
        parse(name)
    assert exc.value.status == case.rejected, exc.value.reason
    assert (exc.value.partial is not None) == case.answerable, exc.value.reason


@pytest.mark.parametrize("name", sorted(n for n, t in TORTURE.items() if t.answerable))
def test_invalid_torture_request_is_answered_by_the_transaction_layer(name: str) -> None:
    layer = TransactionLayer()
    peer = Address("udp", "192.0.2.99", 5099)
    (event,) = layer.receive(TORTURE[name].data, peer, 0.0)
    assert isinstance(event, MalformedMessage) and event.answered == TORTURE[name].rejected
    ((data, _dest),) = layer.transmits()
    assert data.startswith(f"SIP/2.0 {TORTURE[name].rejected} ".encode())


def test_wsinv_reads_through_folding_and_lws() -> None:
    msg = request("wsinv")
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.to.tag == "1918181833n" and msg.to.uri.user == "vivekg"
    assert msg.from_.display == '"J Rosenberg \\\\\\""' and msg.from_.tag == "98asjd8"
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.cseq == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = msg.headers.values("Contact")
    addr = NameAddr.parse(contact)
    assert addr.display == '"Quoted string \\"\\""'
    assert addr.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 150


def test_intmeth_keeps_every_token_character_and_the_odd_uri() -> None:
    msg = request("intmeth")
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq == (139122385, msg.method)
    uri = SipURI.parse(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com" and uri.headers is None
    assert msg.to.display == '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"'
    assert msg.to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.vias[0].branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_and_escnull_keep_escapes_in_uris() -> None:
    msg = request("esc01")
    assert SipURI.parse(msg.uri).user == "sips%3Auser%40example.com"
    assert SipURI.parse(msg.uri).host == "example.net"
    assert msg.to.uri.user == "%75se%72" and msg.from_.uri.user == "I%20have%20spaces"
    (contact,) = msg.headers.values("Contact")
    assert NameAddr.parse(contact).uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert msg.headers.get("Content-Type") == "application/sdp"  # from "C:"
    reg = request("escnull")
    assert reg.to.uri.user == "null-%00-null"
    users = [NameAddr.parse(c).uri.user for c in reg.headers.values("Contact")]
    assert users == ["%00", "%00%00"]


def test_esc02_percent_is_no_escape_in_method_header_name_or_branch() -> None:
    msg = request("esc02")
    assert msg.method == "RE%47IST%45R" and msg.cseq[1] == "RE%47IST%45R"
    assert msg.to.display == '"%Z%45"'
    assert msg.vias[0].branch == "z9hG4bK209%fzsnel234"
    assert msg.headers.values("Contact") == ["<sip:alias1@host1.example.com>",
                                             "<sip:alias3@host3.example.com>"]
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_longreq_keeps_34_vias_in_order_whatever_their_name_case() -> None:
    msg = request("longreq")
    hosts = [v.host for v in msg.vias]
    assert len(hosts) == 34
    assert hosts[:3] == ["sip33.example.com", "sip32.example.com", "sip31.example.com"]
    assert hosts[-1] == "host.example.com" and msg.vias[-1].params["received"] == "192.0.2.5"
    assert msg.to.uri.port == 6000 and len(msg.body) == 150


def test_dblreq_ignores_the_octets_after_content_length_on_udp() -> None:
    msg = request("dblreq")
    assert msg.method == "REGISTER" and msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_dblreq_on_a_stream_is_two_messages() -> None:
    framed = StreamFramer().feed(DBLREQ)
    assert [parse_message(m, stream=True).cseq[1] for m in framed] == ["REGISTER", "INVITE"]


def test_semiuri_user_part_may_hold_semicolons() -> None:
    uri = SipURI.parse(request("semiuri").uri)
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com"
    assert uri.params == {}


def test_transports_unknown_via_transport_is_kept() -> None:
    transports = [v.transport for v in request("transports").vias]
    assert transports == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_is_taken_as_octets() -> None:
    msg = request("mpart01")
    assert len(msg.body) == 553 and _MPART_SIG in msg.body
    assert msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_responses_with_odd_or_empty_reasons_parse() -> None:
    r = parse("unreason")
    assert isinstance(r, Response) and r.status == 200 and len(r.body) == 154
    assert r.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    r = parse("noreason")
    assert isinstance(r, Response) and r.status == 100 and r.reason == ""


def test_liberal_cases_parse_as_the_rfc_allows() -> None:
    assert request("escruri").uri.endswith("?Route=%3Csip:example.com%3E")
    assert request("baddate").headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"
    (ct,) = request("regbadct").headers.values("Contact")
    assert NameAddr.parse(ct).uri.headers == "Route=%3Csip:sip.example.com%3E"
    to = request("badaspec").to
    assert to.uri.user == "t.watson" and str(to) == '"Watson, Thomas" <sip:t.watson@example.org>'


def test_badbranch_parses_with_the_bare_magic_cookie() -> None:
    assert request("badbranch").vias[0].branch == "z9hG4bK"


def test_contact_parameter_belongs_to_header_or_uri_as_written() -> None:
    (c1,) = request("cparam01").headers.values("Contact")
    assert NameAddr.parse(c1).params == {"unknownparam": None}
    assert NameAddr.parse(c1).uri.params == {}
    (c2,) = request("cparam02").headers.values("Contact")
    assert NameAddr.parse(c2).params == {}
    assert NameAddr.parse(c2).uri.params == {"unknownparam": None}
    (c3,) = request("regescrt").headers.values("Contact")
    assert NameAddr.parse(c3).uri.headers == "Route=%3Csip:sip.example.com%3E"


def test_unknown_schemes_parse_and_are_left_to_the_ua() -> None:
    assert request("unkscm").uri == "nobodyKnowsThisScheme:totallyopaquecontent"
    assert request("novelsc").uri == "soap.beep://192.0.2.103:3002"
    msg = request("unksm2")
    assert msg.to.uri.scheme == "isbn" and msg.from_.uri.scheme == "http"


def test_inv2543_body_is_the_rest_of_the_datagram_but_a_stream_needs_content_length() -> None:
    msg = request("inv2543")
    assert msg.vias[0].branch is None and msg.from_.tag is None
    assert msg.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")
    with pytest.raises(ParseError):
        parse_message(INV2543, stream=True)


def test_valid_torture_request_reaches_the_engine() -> None:
    for name in VALID:
        if TORTURE[name].data.startswith(b"SIP/"):
            continue  # responses go to their transaction, not to the engine
        layer = TransactionLayer()
        events = layer.receive(TORTURE[name].data, Address("udp", "192.0.2.99", 5099), 0.0)
        assert [type(e) for e in events] == [RequestReceived], name
        assert layer.transmits() == [], name
