"""The HTTP edge (SPEC §4): thin handlers — parse, call the domain, answer JSON.

Errors are `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ..app import App

APP: web.AppKey[App] = web.AppKey("calltrackd", object)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed")


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason)


def require_admin(request: web.Request) -> None:
    token = request.app[APP].settings.http.admin_token
    given = request.headers.get("Authorization", "")
    if not token:
        raise ApiError(403, "admin_disabled", "no http.admin_token is configured")
    if not given.startswith("Bearer ") or not hmac.compare_digest(
        given[7:].strip().encode(), token.encode()
    ):
        raise ApiError(401, "unauthorized", "admin endpoints need 'Authorization: Bearer "
                                            "<http.admin_token>'")


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        if raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_parameter",
                       f"{name}: expected ISO 8601 time or unix seconds, got {raw!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def list_calls(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query
    limit_s = q.get("limit", "50")
    if not limit_s.isdigit() or not 1 <= int(limit_s) <= 1000:
        raise ApiError(400, "invalid_parameter", "limit: expected an integer 1..1000")
    outcome = q.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(400, "invalid_parameter", f"outcome: one of {', '.join(OUTCOMES)}")
    app = request.app[APP]
    try:
        calls, cursor = await app.store.list_calls(
            tracker=q.get("tracker") or None,
            since=_time_param(request, "since"),
            until=_time_param(request, "until"),
            outcome=outcome,
            limit=int(limit_s),
            cursor=q.get("cursor") or None,
        )
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"cursor: {exc}") from None
    return web.json_response({"calls": [c.to_json() for c in calls], "next_cursor": cursor})


async def get_call(request: web.Request) -> web.Response:
    require_admin(request)
    record = await request.app[APP].store.get_call(request.match_info["call_id"])
    if record is None:
        raise ApiError(404, "not_found", "no call with that id")
    return web.json_response(record.to_json())


async def healthz(request: web.Request) -> web.Response:
    ok, checks = await request.app[APP].health()
    return web.json_response({"status": "ok" if ok else "degraded", "checks": checks},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    app = request.app[APP]
    await app.refresh_gauges()
    body = app.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_http_app(app: App) -> web.Application:
    http = web.Application(middlewares=[errors], client_max_size=64 * 1024)
    http[APP] = app
    http.add_routes([
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
        web.get("/v1/calls", list_calls),
        web.get("/v1/calls/{call_id}", get_call),
    ])
    return http


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
