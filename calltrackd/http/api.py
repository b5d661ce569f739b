"""The HTTP edge: thin handlers — parse, call the domain, answer JSON.

Errors are `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status.

Every request body passes `body_guard` before any handler sees it: read within
`http.body_timeout` (a client dribbling its body is answered 408), at most
`MAX_BODY` bytes (413), and when it is JSON, refused with 400 if it nests deeper than
`MAX_JSON_DEPTH` or holds a string UTF-8 cannot carry (a lone surrogate such as
`"\\ud800"`: no store can write it), naming the field. Handlers then read the body as
usual (`request.json()`, served from the bytes already read) or take the parsed value
with `read_json`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from ..metrics import CONTENT_TYPE_LATEST
from ..store.base import CALL_FILTERS, StoreError, text_ok
from .keys import HEALTH, SCRAPE, SETTINGS, STORE, require

NEEDS: Final = (SETTINGS, STORE, HEALTH, SCRAPE)
_log = structlog.get_logger("calltrackd.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# set on a request by auth.viewer: the one tracker a read-only viewer token may see
VIEWER = "calltrackd.viewer"
OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed")
MAX_BODY = 64 * 1024  # bytes of a request body (413 beyond)
MAX_JSON_DEPTH = 16  # nested objects/arrays in a JSON body (400 beyond)
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout", float)
_PARSED: str = "calltrackd.json"  # request key of the body parsed by body_guard
_NO_BODY = ("GET", "HEAD", "OPTIONS")


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
    except (StoreError, OSError, TimeoutError) as exc:
        _log.warning("http.store_unavailable", path=request.path, error=repr(exc)[:200])
        return error_response(503, "store_unavailable", "the store did not answer; try again")
    except Exception:  # a bug: logged with its traceback, answered in JSON all the same
        _log.exception("http.handler_failed", path=request.path, method=request.method)
        return error_response(500, "internal_error", "internal error (logged)")


class _NotJson(Exception):
    """The body does not parse as JSON: the handler answers that in its own words."""


def check_json(body: bytes) -> object:
    """The parsed body; ApiError (400) when it nests deeper than MAX_JSON_DEPTH or holds a
    string (or key) that is not valid Unicode text; _NotJson when it is not JSON."""
    try:
        # orjson refuses lone surrogates and depth > 1024 without recursing in Python
        value: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(body)
        except RecursionError:
            raise ApiError(400, "invalid_json",
                           f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError:  # UnicodeDecodeError included
            raise _NotJson from None
    _check_value(value)
    return value


def _check_value(root: object) -> None:
    """Iteratively (no recursion): depth and encodable strings, naming the first bad one."""
    stack: list[tuple[object, str, int]] = [(root, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not text_ok(value):
                raise _bad_text(path or "body")
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ApiError(400, "invalid_json",
                               f"{path or 'body'}: nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    name = f"{path}.{key}" if path else str(key)
                    if not text_ok(key):
                        raise _bad_text(name.encode("utf-8", "backslashreplace").decode())
                    stack.append((item, name, depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _bad_text(field: str) -> ApiError:
    return ApiError(400, "invalid_field",
                    f"{field}: must be valid Unicode text (a lone surrogate such as \\ud800 "
                    "cannot be stored)")


@web.middleware
async def body_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in _NO_BODY and request.body_exists:
        try:
            async with asyncio.timeout(request.app[BODY_TIMEOUT]):
                body = await request.read()  # kept by aiohttp: request.json() reuses it
        except TimeoutError:
            raise ApiError(408, "request_timeout",
                           "the request body did not arrive in time") from None
        if body:
            try:
                request[_PARSED] = check_json(body)
            except _NotJson:
                pass
    return await handler(request)


async def read_json(request: web.Request) -> object:
    """The JSON body (already checked by `body_guard`); 400 when it is not JSON."""
    if _PARSED in request:
        return request[_PARSED]
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None


def require_admin(request: web.Request) -> None:
    if request.get(VIEWER) is not None:  # a viewer token, already pinned to its tracker
        return
    token = request.app[SETTINGS]().http.admin_token
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
        if raw.isascii() and raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):  # superscript digits, year 10**300
        raise ApiError(400, "invalid_parameter",
                       f"{name}: expected ISO 8601 time or unix seconds, got {raw!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


MAX_FILTER = 256  # characters of a channel/source/campaign/tag filter of GET /v1/calls


def _filters(request: web.Request) -> dict[str, str]:
    """`channel`, `source`, `campaign`, `tag`, `carrier` of the query (CALL_FILTERS), one value
    of 1..MAX_FILTER printable characters matched exactly as the reports show it."""
    out = {}
    for name in CALL_FILTERS:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise ApiError(400, "invalid_parameter", f"{name}: give it once")
        value = values[0].strip() if values else ""
        if not value:
            continue
        if len(value) > MAX_FILTER or not text_ok(value) or any(
                ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ApiError(400, "invalid_parameter",
                           f"{name}: expected 1..{MAX_FILTER} printable characters")
        out[name] = value
    return out


async def list_calls(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query
    limit_s = q.get("limit", "50")
    if not (limit_s.isascii() and limit_s.isdigit()) or not 1 <= int(limit_s) <= 1000:
        raise ApiError(400, "invalid_parameter", "limit: expected an integer 1..1000")
    outcome = q.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise ApiError(400, "invalid_parameter", f"outcome: one of {', '.join(OUTCOMES)}")
    try:
        calls, cursor = await request.app[STORE].list_calls(
            tracker=q.get("tracker") or None,
            since=_time_param(request, "since"),
            until=_time_param(request, "until"),
            outcome=outcome,
            limit=int(limit_s),
            cursor=q.get("cursor") or None,
            where=_filters(request),
        )
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"cursor: {exc}") from None
    return web.json_response({"calls": [c.to_json() for c in calls], "next_cursor": cursor})


async def get_call(request: web.Request) -> web.Response:
    require_admin(request)
    record = await request.app[STORE].get_call(request.match_info["call_id"])
    if record is None:
        raise ApiError(404, "not_found", "no call with that id")
    return web.json_response(record.to_json())


async def healthz(request: web.Request) -> web.Response:
    node = request.app[HEALTH]
    ok, checks = await node.health()
    status = "ok" if ok else "degraded"
    if node.draining:
        ok, status = False, "draining"
    return web.json_response({"status": status, "checks": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[SCRAPE]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_http_app(body_timeout: float) -> web.Application:
    """The application with the JSON error and body guards; the caller puts in the
    services (`keys`), then calls `setup` of this module and of each handler module."""
    http = web.Application(middlewares=[errors, body_guard], client_max_size=MAX_BODY)
    http[BODY_TIMEOUT] = body_timeout
    return http


def setup(http: web.Application) -> None:
    require(http, NEEDS, __name__)
    http.add_routes([
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
        web.get("/v1/calls", list_calls),
        web.get("/v1/calls/{call_id}", get_call),
    ])


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
