"""Signed recording links (calltrackd/http/recordings.py): the key comes from the
configured tokens and from nothing else, and a signature names one call and one expiry."""

from __future__ import annotations

from dataclasses import replace

from calltrackd.config import Settings
from calltrackd.config.settings import HttpSettings
from calltrackd.http.recordings import link_key, sign, signed_url
from calltrackd.tracking.model import Tracker


def settings(admin: str | None, *viewers: str) -> Settings:
    t = Tracker("acme", "pk_acme", "+74990000000", (), viewer_tokens=viewers)
    return Settings(http=HttpSettings(admin_token=admin), trackers=(t,))


def test_no_token_configured_means_no_key() -> None:
    # a key of public inputs could be forged: no link is made or accepted then
    assert link_key(settings(None)) is None
    assert link_key(settings("")) is None


def test_the_key_follows_every_token() -> None:
    base = link_key(settings("admin-token-1", "viewer-a"))
    assert base is not None and base == link_key(settings("admin-token-1", "viewer-a"))
    assert base != link_key(settings("admin-token-2", "viewer-a"))  # admin changed
    assert base != link_key(settings("admin-token-1", "viewer-b"))  # a viewer changed
    assert base != link_key(settings("admin-token-1"))  # a viewer revoked
    assert base != link_key(settings("admin-token-1", "viewer-a", "viewer-c"))
    # tokens are length-prefixed: moving text between two tokens changes the key
    assert link_key(settings("ab", "c")) != link_key(settings("a", "bc"))
    viewer_only = settings(None, "viewer-a")
    assert link_key(viewer_only) is not None
    assert link_key(replace(viewer_only, trackers=())) is None


def test_a_signature_names_one_call_and_one_expiry() -> None:
    key = link_key(settings("admin-token-1"))
    assert key is not None
    sig = sign(key, "c_1", 1000)
    assert len(sig) == 64 and sig == sign(key, "c_1", 1000)
    assert sig not in {sign(key, "c_2", 1000), sign(key, "c_1", 1001),
                       sign(key + b"x", "c_1", 1000), sign(key, "c_1\n1000", 0)}
    assert signed_url(key, "c_1", 1000) == f"/v1/calls/c_1/recording?expires=1000&sig={sig}"
