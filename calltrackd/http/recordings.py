"""`GET /v1/calls/{call_id}/recording` (admin): the call's recording, with HTTP Range
for seeking (206 + Content-Range), 404 when there is none; and the call object's
`recording` field, built by `recording_json`."""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from ..media.store import RecordingInfo, RecordingStore
from .api import ApiError, require_admin
from .keys import RECORDINGS, require

NEEDS: Final = (RECORDINGS,)

__all__ = ["get_recording", "recording_json", "recording_url", "setup"]


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


async def get_recording(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    call_id = request.match_info["call_id"]
    info = request.app[RECORDINGS].get(call_id)
    if info is None:
        raise ApiError(404, "not_found", "no recording for that call")
    ext = info.format
    return web.FileResponse(info.path, headers={
        "Content-Type": info.content_type,
        "Content-Disposition": f'inline; filename="{call_id}.{ext}"',
        "Cache-Control": "private, max-age=0",
    })


def setup(http: web.Application) -> None:
    require(http, NEEDS, __name__)
    http.add_routes([web.get("/v1/calls/{call_id}/recording", get_recording)])
