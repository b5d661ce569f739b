"""Who is asking: the admin token, or a tracker's read-only viewer token.

Admin endpoints call `require_admin` (api.py). A viewer token (`[[trackers]]
viewer_tokens`) is accepted by the read endpoints the dashboard uses, and sees only its
own tracker: the `viewer` middleware pins such a request to that tracker (a `tracker`
parameter naming another one is refused with 403, a missing one is filled in) and answers
404 for a single call of another tracker, exactly as for a call that does not exist.
Everything that writes (tags, spend, resending webhooks) stays with the admin token.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from aiohttp import web
from multidict import MultiDict

from ..tracking.model import Tracker
from .api import VIEWER, ApiError, Handler, require_admin
from .keys import SETTINGS, STORE, require

NEEDS: Final = (SETTINGS, STORE)

# route templates a viewer token may GET; each answers only for the `tracker` parameter
READABLE = frozenset({
    "/v1/me", "/v1/calls", "/v1/calls/{call_id}", "/v1/calls/{call_id}/recording",
    "/v1/calls/{call_id}/recording/link",
    "/v1/stats", "/v1/pools/usage", "/v1/reports",
})


def bearer(request: web.Request) -> str | None:
    given = request.headers.get("Authorization", "")
    return given[7:].strip() if given.startswith("Bearer ") else None


def viewer_tracker(trackers: tuple[Tracker, ...], token: str) -> Tracker | None:
    """The tracker whose viewer token this is (every token compared in constant time)."""
    found = None
    for tracker in trackers:
        for candidate in tracker.viewer_tokens:
            if hmac.compare_digest(candidate.encode(), token.encode()):
                found = tracker
    return found


@web.middleware
async def viewer(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = bearer(request)
    if token is None:
        return await handler(request)
    settings = request.app[SETTINGS]()
    admin = settings.http.admin_token
    if admin and hmac.compare_digest(token.encode(), admin.encode()):
        return await handler(request)
    tracker = viewer_tracker(settings.trackers, token)
    if tracker is None:
        return await handler(request)  # the handler answers 401
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else ""
    if request.method not in ("GET", "HEAD") or template not in READABLE:
        raise ApiError(403, "read_only", "a viewer token reads its own tracker's calls, "
                                         "reports and stats; this needs the admin token")
    asked = [t for value in request.query.getall("tracker", []) for t in value.split(",")]
    if any(t and t != tracker.id for t in asked):
        raise ApiError(403, "forbidden", f"tracker: this token sees tracker {tracker.id!r} only")
    query = MultiDict(request.query)
    query["tracker"] = tracker.id
    pinned = request.clone(rel_url=request.rel_url.with_query(query))
    pinned[VIEWER] = tracker.id
    call_id = request.match_info.get("call_id")
    if call_id is not None:
        record = await request.app[STORE].get_call(call_id)
        if record is None or record.tracker != tracker.id:
            raise ApiError(404, "not_found", "no call with that id")
    return await handler(pinned)


def _tracker_json(t: Tracker) -> dict[str, Any]:
    return {"id": t.id, "timezone": t.timezone,
            "pools": [{"name": p.name, "size": len(p.numbers)} for p in t.pools],
            "static": [{"number": s.number, "channel": s.channel} for s in t.static],
            "default_number": t.default_number}


async def me(request: web.Request) -> web.Response:
    """What the dashboard may show this token: its role, the trackers it sees and the
    configured carriers' names (the Calls page's carrier filter)."""
    require_admin(request)
    from .. import __version__

    settings = request.app[SETTINGS]()
    only = request.get(VIEWER)
    trackers = [_tracker_json(t) for t in settings.trackers if only is None or t.id == only]
    return web.json_response({"role": "viewer" if only else "admin", "trackers": trackers,
                              "carriers": [c.name for c in settings.carriers],
                              "version": __version__})


def setup(http: web.Application) -> None:
    require(http, NEEDS, __name__)
    http.middlewares.append(viewer)  # inside `errors`, so refusals are JSON
    http.add_routes([web.get("/v1/me", me)])
