"""`GET /v1/calls/{call_id}/recording`: the call's recording, with HTTP Range for seeking
(206 + Content-Range), 404 when there is none; the call object's `recording` field, built
by `recording_json`; and signed links for players.

A browser's `<audio src>` and `<a download>` cannot send an Authorization header, so
`GET /v1/calls/{call_id}/recording/link` (the admin token, or a viewer token of the
call's tracker: the `viewer` middleware answers 404 for another tracker's call) returns
a URL of the recording that carries `expires` (unix seconds, LINK_TTL ahead) and `sig`,
an HMAC-SHA256 of the call id and the expiry. The recording answers such a URL without a
token until it expires; a link opens one call's recording only. The key is derived from
the configured tokens (admin and viewers), so every daemon sharing the configuration
accepts the links and changing or revoking any token voids them all.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, Final

from aiohttp import web

from ..config import Settings
from ..media.store import RecordingInfo, RecordingStore
from .api import ApiError, require_admin
from .keys import RECORDINGS, SETTINGS, require

NEEDS: Final = (SETTINGS, RECORDINGS)
LINK_TTL: Final = 900  # seconds a signed link plays and seeks; the dashboard asks again

__all__ = ["LINK_TTL", "get_recording", "link_key", "recording_json", "recording_url",
           "setup", "sign", "signed_url"]


def recording_url(call_id: str) -> str:
    return f"/v1/calls/{call_id}/recording"


def recording_object(info: RecordingInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    out: dict[str, Any] = {"url": recording_url(info.call_id), "seconds": info.seconds,
                           "bytes": info.bytes}
    if info.format != "wav":  # kept as captured: the codec could not be converted
        out["format"] = info.format
        out["note"] = info.note
    return out


def recording_json(store: RecordingStore, call_id: str) -> dict[str, Any] | None:
    """The call object's `recording`: {"url", "seconds", "bytes"} or None. The URL is
    relative to the API's base (the same admin token fetches it)."""
    return recording_object(store.get(call_id))


def link_key(settings: Settings) -> bytes | None:
    """The links' HMAC key, from every configured token; None when there is none (then
    no link is made or accepted: a key of public inputs could be forged)."""
    tokens = [settings.http.admin_token or ""]
    tokens += [t for tracker in settings.trackers for t in tracker.viewer_tokens]
    if not any(tokens):
        return None
    digest = hashlib.sha256(b"calltrackd recording link v1\0")
    for token in tokens:
        raw = token.encode()
        digest.update(len(raw).to_bytes(4, "big") + raw)
    return digest.digest()


def sign(key: bytes, call_id: str, expires: int) -> str:
    return hmac.new(key, f"{call_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_url(key: bytes, call_id: str, expires: int) -> str:
    return f"{recording_url(call_id)}?expires={expires}&sig={sign(key, call_id, expires)}"


def _check_link(request: web.Request, call_id: str) -> None:
    """A signed link: valid for this call and not expired, else 403."""
    key = link_key(request.app[SETTINGS]())
    raw = request.query.get("expires", "")
    expires = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else -1
    given = request.query.get("sig", "")
    good = key is not None and expires >= 0 and hmac.compare_digest(
        given.encode(), sign(key, call_id, expires).encode())
    if not good:
        raise ApiError(403, "bad_link", "this recording link is not valid")
    if expires < time.time():
        raise ApiError(403, "link_expired", "this recording link has expired; ask "
                                            "/v1/calls/{id}/recording/link for a new one")


async def get_recording(request: web.Request) -> web.StreamResponse:
    call_id = request.match_info["call_id"]
    if "sig" in request.query and "Authorization" not in request.headers:
        _check_link(request, call_id)
    else:
        require_admin(request)
    info = request.app[RECORDINGS].get(call_id)
    if info is None:
        raise ApiError(404, "not_found", "no recording for that call")
    ext = info.format
    return web.FileResponse(info.path, headers={
        "Content-Type": info.content_type,
        "Content-Disposition": f'inline; filename="{call_id}.{ext}"',
        "Cache-Control": "private, max-age=0",
    })


async def get_link(request: web.Request) -> web.Response:
    """A signed URL of the call's recording for a player or a download link."""
    require_admin(request)
    call_id = request.match_info["call_id"]
    if request.app[RECORDINGS].get(call_id) is None:
        raise ApiError(404, "not_found", "no recording for that call")
    key = link_key(request.app[SETTINGS]())
    if key is None:  # unreachable: require_admin needs a token
        raise ApiError(403, "admin_disabled", "no token is configured")
    expires = int(time.time()) + LINK_TTL
    return web.json_response({"url": signed_url(key, call_id, expires), "expires": expires,
                              "expires_in": LINK_TTL})


def setup(http: web.Application) -> None:
    require(http, NEEDS, __name__)
    http.add_routes([web.get("/v1/calls/{call_id}/recording", get_recording),
                     web.get("/v1/calls/{call_id}/recording/link", get_link)])
