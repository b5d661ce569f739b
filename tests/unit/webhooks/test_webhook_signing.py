from __future__ import annotations

import hashlib
import hmac

from calltrackd.webhooks.signing import sign, verify

SECRET = "whsec_test"
BODY = b'{"event":"call.ended","event_id":"evt_x"}'
T = 1_795_000_000


def test_signature_header_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_test", b"1795000000." + BODY, digestmod=hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T) == f"t=1795000000,v1={expected}"


def test_signature_known_vector() -> None:
    # From outside Python: printf '1700000000.{}' | openssl dgst -sha256 -hmac key
    assert sign("key", b"{}", 1_700_000_000) == (
        "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
    )


def test_receiver_accepts_fresh_signature() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, T), now=T + 10)


def test_receiver_rejects_tampered_body() -> None:
    header = sign(SECRET, BODY, T)
    assert not verify(SECRET, BODY.replace(b"ended", b"start"), header, now=T)


def test_receiver_rejects_wrong_secret() -> None:
    assert not verify("whsec_other", BODY, sign(SECRET, BODY, T), now=T)


def test_receiver_rejects_stale_or_future_timestamp() -> None:
    header = sign(SECRET, BODY, T)
    assert verify(SECRET, BODY, header, tolerance=300, now=T + 300)
    assert not verify(SECRET, BODY, header, tolerance=300, now=T + 301)
    assert not verify(SECRET, BODY, header, tolerance=300, now=T - 301)


def test_receiver_rejects_timestamp_swapped_into_valid_signature() -> None:
    header = sign(SECRET, BODY, T).replace(f"t={T}", f"t={T + 100}")
    assert not verify(SECRET, BODY, header, now=T + 100)


def test_receiver_accepts_any_of_several_v1_during_secret_rotation() -> None:
    old = sign("whsec_old", BODY, T)
    new = sign(SECRET, BODY, T)
    header = old + "," + new.split(",", 1)[1]
    assert verify(SECRET, BODY, header, now=T)
    assert verify("whsec_old", BODY, header, now=T)


def test_malformed_headers_are_invalid_not_errors() -> None:
    for header in ["", "garbage", "t=abc,v1=00", "v1=00", f"t={T}", f"t={T},v1", "=,="]:
        assert not verify(SECRET, BODY, header, now=T)
