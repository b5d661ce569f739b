"""Digest credentials against the RFCs' own worked examples."""

from calltrackd.sip.digest import build_authorization, parse_challenge


def test_rfc2617_mufasa_example() -> None:
    ch = parse_challenge('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                         'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                         'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert ch is not None and ch.qop == ("auth", "auth-int")
    value = build_authorization(ch, "GET", "/dir/index.html", "Mufasa", "Circle Of Life",
                                nc=1, cnonce="0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert "qop=auth" in value and "nc=00000001" in value
    assert 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value


def test_rfc7616_sha256_example() -> None:
    ch = parse_challenge('Digest realm="http-auth@example.org", qop="auth, auth-int", '
                         'algorithm=SHA-256, '
                         'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                         'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
    assert ch is not None
    value = build_authorization(ch, "GET", "/dir/index.html", "Mufasa", "Circle of Life",
                                nc=1, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert ('response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"'
            in value)


def test_non_digest_or_incomplete_challenge_is_not_answered() -> None:
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge('Digest realm="x"') is None
    assert parse_challenge('Digest realm="x", nonce="n", algorithm=AKAv1-MD5') is None
