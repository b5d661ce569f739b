"""The tracking side of the HTTP API: visitor sessions, the site snippet,
statistics and the webhook admin. Thin: parse and validate, call the domain, answer.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from aiohttp import web

from .. import ids, jsonx
from ..store.base import PoolStats, StoreError
from ..tracking import stats as domain_stats
from ..tracking.model import SessionAnswer, SessionInput, Tracker
from ..tracking.simulator import Sizing
from .api import VIEWER, ApiError, Handler, read_json, require_admin
from .keys import CLOCK, METRICS, NOTIFY_OUTBOX, SETTINGS, SHED, STORE, TRACKING, require
from .ratelimit import RateLimiter

STATIC = Path(__file__).resolve().parent / "static"
LIMITER: web.AppKey[RateLimiter] = web.AppKey("session_limiter", RateLimiter)
SIZINGS: web.AppKey[domain_stats.SizingCache] = web.AppKey("pool_sizings",
                                                            domain_stats.SizingCache)

NEEDS: Final = (SETTINGS, STORE, TRACKING, METRICS, NOTIFY_OUTBOX, SHED, CLOCK)
_SHORT = ("client_id", "ym_uid", "visitor_id", "ga_session_id", "utm_source", "utm_medium",
          "utm_campaign", "utm_term", "utm_content")
_LONG = ("referrer", "landing_page")
MAX_SHORT = 256
MAX_LONG = 2048
MAX_CUSTOM = 2048


@functools.lru_cache(maxsize=64)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(ts: float) -> str:
    # every answer in the same second carries the same text: formatted once
    return _iso_second(int(ts))


def _answer(a: SessionAnswer) -> web.Response:
    return web.json_response({"session_id": a.session_id, "number": a.number, "kind": a.kind,
                              "expires_at": _iso(a.expires_at)}, dumps=jsonx.dumps)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_field", f"{field}: {message}")


def parse_session_body(body: object) -> tuple[str, str | None, SessionInput]:
    """(public key, session id, visitor fields) or ApiError naming the field.
    Unknown keys are ignored so that newer snippets work with older daemons."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    key = body.get("tracker")
    if not isinstance(key, str) or not key:
        raise _invalid("tracker", "required: the tracker's public_key")
    session_id = body.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or len(session_id) > 64):
        raise _invalid("session_id", "must be null or a session id string")
    values: dict[str, Any] = {}
    for name, limit in [(n, MAX_SHORT) for n in _SHORT] + [(n, MAX_LONG) for n in _LONG]:
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise _invalid(name, f"must be a string of at most {limit} characters")
        values[name] = value
    custom = _custom(body)
    if custom is not None:
        values["custom"] = custom
    return key, session_id or None, SessionInput(**values)


def _custom(body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's `custom` object (None when absent) or ApiError."""
    custom = body.get("custom")
    if custom is None:
        return None
    if not isinstance(custom, dict):
        raise _invalid("custom", "must be an object")
    if any(not isinstance(v, str | int | float | bool) and v is not None
           for v in custom.values()):
        raise _invalid("custom", "values must be strings, numbers, booleans or null")
    if len(json.dumps(custom)) > MAX_CUSTOM:
        raise _invalid("custom", f"must be at most {MAX_CUSTOM} bytes of JSON")
    return custom


def parse_ping_body(raw: bytes) -> dict[str, Any] | None:
    """The page's newest `custom` from a ping's body (optional: empty, `{}` or
    `{"custom": {...}}`), or ApiError."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return _custom(body)


async def _json(request: web.Request) -> object:
    return await read_json(request)  # parsed (and checked) once, by the API's body guard


async def create_session(request: web.Request) -> web.Response:
    key, session_id, fields = parse_session_body(await _json(request))
    tracker = request.app[SETTINGS]().tracker_by_key(key)
    if tracker is None:
        raise ApiError(404, "unknown_tracker", "tracker: no tracker has that public_key")
    now = request.app[CLOCK]()
    limiter = request.app[LIMITER]
    if (limiter.enabled and not await _is_renewal(request, tracker, session_id)
            and not limiter.allow(_client(request), now)):
        answer = SessionAnswer(ids.session_id(), tracker.default_number,
                               "default", now + tracker.reservation_ttl)
    else:
        answer = await request.app[TRACKING].create_session(tracker, fields, session_id, now)
    request.app[METRICS].reservations.labels(tracker.id, answer.kind).inc()
    return _answer(answer)


async def _is_renewal(request: web.Request, tracker: Tracker, session_id: str | None) -> bool:
    # Only a session of this tracker is renewed (the service starts a fresh one for any
    # other id): a bot must not pass the limit with a session id of another site.
    if session_id is None:
        return False
    try:
        session = await request.app[STORE].get_session(session_id)
    except Exception:
        return False
    return session is not None and session.tracker == tracker.id


def _client(request: web.Request) -> str:
    # Behind a reverse proxy every visitor shares the proxy's address: put calltrackd's
    # HTTP port on the edge, or raise http.session_rate_limit accordingly.
    return request.remote or "unknown"


async def ping(request: web.Request) -> web.Response:
    custom = parse_ping_body(await request.read())
    try:
        answer = await request.app[TRACKING].ping(request.match_info["session_id"], custom)
    except (StoreError, OSError, TimeoutError) as exc:
        raise ApiError(503, "store_unavailable", f"the store did not answer: {exc}") from None
    if answer is None:
        raise ApiError(404, "unknown_session", "no live session with that id")
    return _answer(answer)


_SNIPPET: tuple[bytes, str] | None = None


def compact_js(source: str) -> str:
    """t.js as served: without its comments, indentation and blank lines. Line by line
    is safe for this file: it has no multi-line strings, and its end-of-line comments
    follow two spaces ("x;  // why"), which no string or regex of it contains."""
    body = source.split("*/", 1)[1] if source.startswith("/*") else source
    body = re.sub(r"/\* [^*]* \*/", "", body)  # { /* private mode */ }
    lines = [ln.split("  // ", 1)[0].strip() for ln in body.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith("//")]
    return "/* calltrackd site snippet: see its README */\n" + "\n".join(kept) + "\n"


async def snippet(request: web.Request) -> web.Response:
    global _SNIPPET
    if _SNIPPET is None:
        body = compact_js((STATIC / "t.js").read_text()).encode()
        _SNIPPET = (body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    body, etag = _SNIPPET
    headers = {"ETag": etag, "Cache-Control": "public, max-age=300"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/javascript", charset="utf-8",
                        headers=headers)


# --- statistics ------------------------------------------------------------------------


def _window(request: web.Request) -> tuple[datetime, datetime]:
    from .api import _time_param

    until = _time_param(request, "until") or datetime.fromtimestamp(request.app[CLOCK](), UTC)
    since = _time_param(request, "since") or until - timedelta(hours=24)
    if since > until:
        raise ApiError(400, "invalid_parameter", "since: must not be after until")
    return since, until


async def stats(request: web.Request) -> web.Response:
    """Per tracker and source: calls, answered, missed, qualified, first-time callers;
    coverage, accuracy and estimated accuracy, pools with their size curve (the
    period's visits replayed, through the pool's own calls at its size), INVITEs shed
    (calltrackd.tracking.stats); for the admin, this node's shed INVITEs by reason."""
    require_admin(request)
    store = request.app[STORE]
    since, until = _window(request)
    only = request.query.get("tracker") or None
    now = request.app[CLOCK]()
    calls, attributions = await store.window_stats(only, since, until)
    visitors = await store.visitor_stats(only, since, until)
    pools = await store.pool_stats(now, since.timestamp())
    shed = request.app[SHED]()
    out = []
    for tracker in request.app[SETTINGS]().trackers:
        if only and tracker.id != only:
            continue
        sizings = await _sizings(request, tracker, pools, now, since.timestamp(),
                                 until.timestamp())
        out.append(domain_stats.tracker_stats(tracker, calls, visitors, pools, attributions,
                                              sizings, shed["trackers"]))
    answer: dict[str, Any] = {"since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "until": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              "trackers": out}
    if request.get(VIEWER) is None:  # other trackers' and unknown DIDs' too: admin only
        answer["shed"] = {"total": shed["total"], "reasons": shed["reasons"]}
    return web.json_response(answer)


async def _sizings(request: web.Request, tracker: Tracker, pools: list[PoolStats],
                   now: float, since: float, until: float) -> dict[str, Sizing]:
    """Each pool's replay of the period's visits (its last SIZING_HISTORY at most) at
    other sizes, from the cache or made in a worker thread (seconds of CPU for a busy
    pool: off the event loop, once per SIZING_TTL)."""
    cache = request.app[SIZINGS]
    start = max(since, until - domain_stats.SIZING_HISTORY)
    window = cache.window(start, until)
    out, missing = cache.split(tracker.id, pools, now, window)
    if not missing:
        return out
    visits = await request.app[STORE].visits(tracker.id, start, until)
    by_pool = domain_stats.pool_visits(tracker, visits)
    model = request.app[TRACKING].delay_models.get(tracker.id, tracker.reservation_ttl).model
    for name, size in missing.items():
        sizing = await asyncio.to_thread(domain_stats.size_pool, tracker,
                                         by_pool.get(name, []), model, size)
        cache.put((tracker.id, name), now, sizing, window)
        out[name] = sizing
    return out


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def local_day_hours(day: date, zone: ZoneInfo) -> range:
    """The store's usage hours (unix seconds // 3600) that overlap the day in the zone:
    24 of them, 23 or 25 on a day the clocks change, one more where the zone's offset is
    not whole hours (the first and last then straddle midnight)."""
    start = datetime.combine(day, time(), zone).timestamp()
    end = datetime.combine(day + timedelta(days=1), time(), zone).timestamp()
    return range(int(start // 3600), -int(-end // 3600))


async def pool_usage(request: web.Request) -> web.Response:
    """Each pool of a tracker hour by hour over one day of the tracker's time zone: the
    most numbers in use at once and the requests turned away, against the pool's size."""
    require_admin(request)
    q = request.query
    trackers = {t.id: t for t in request.app[SETTINGS]().trackers}
    tracker = trackers.get(q.get("tracker") or "")
    if tracker is None:
        raise ApiError(400, "invalid_parameter",
                       "tracker: required, one of " + ", ".join(sorted(trackers)))
    zone = ZoneInfo(tracker.timezone)
    raw = q.get("date") or datetime.fromtimestamp(request.app[CLOCK](), zone).date().isoformat()
    try:
        day = date.fromisoformat(raw) if _DATE.fullmatch(raw) else None
        hours = local_day_hours(day, zone) if day is not None else None
    except (ValueError, OverflowError):
        day = hours = None
    if day is None or hours is None:
        raise ApiError(400, "invalid_parameter", f"date: expected YYYY-MM-DD, got {raw!r}")
    pools = [p for p in tracker.pools if q.get("pool") in (None, "", p.name)]
    if not pools:
        raise ApiError(400, "invalid_parameter", "pool: one of "
                       + ", ".join(p.name for p in tracker.pools) if tracker.pools
                       else "pool: this tracker has no pools")
    out = []
    for pool in pools:
        recorded = {b.hour: b for b in await request.app[STORE].pool_usage(
            tracker.id, pool.name, hours.start, hours.stop)}
        out.append({"pool": pool.name, "size": len(pool.numbers), "hours": [{
            "at": _iso(h * 3600), "local": datetime.fromtimestamp(h * 3600, zone).isoformat(),
            "peak": recorded[h].peak if h in recorded else None,
            "shortfall": recorded[h].shortfall if h in recorded else 0,
        } for h in hours]})
    return web.json_response({"tracker": tracker.id, "timezone": tracker.timezone,
                              "date": day.isoformat(), "pools": out})


# --- webhook admin ---------------------------------------------------------------------


async def list_webhooks(request: web.Request) -> web.Response:
    require_admin(request)
    status = request.query.get("status") or None
    if status not in (None, "pending", "delivered", "failed"):
        raise ApiError(400, "invalid_parameter", "status: pending, delivered or failed")
    limit_s = request.query.get("limit", "100")
    if not limit_s.isdigit() or not 1 <= int(limit_s) <= 1000:
        raise ApiError(400, "invalid_parameter", "limit: expected an integer 1..1000")
    kind = request.query.get("kind") or None
    if kind not in (None, "webhook", "ga4", "metrica", "telegram", "slack"):
        raise ApiError(400, "invalid_parameter", "kind: webhook, ga4, metrica, telegram or slack")
    rows = await request.app[STORE].list_deliveries(status, int(limit_s), kind)
    return web.json_response({"deliveries": [{
        "id": d.id, "kind": d.kind, "event_id": d.event_id, "event": d.event,
        "tracker": d.tracker, "url": d.url, "status": d.status, "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": _iso(d.created_at),
        "next_attempt_at": _iso(d.next_attempt_at) if d.status == "pending" else None,
    } for d in rows]})


async def resend_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    delivery_id = request.match_info["delivery_id"]
    if not await request.app[STORE].requeue(delivery_id, request.app[CLOCK]()):
        raise ApiError(404, "not_found", "no failed or pending delivery with that id")
    request.app[NOTIFY_OUTBOX]()
    return web.json_response({"id": delivery_id, "status": "pending"}, status=202)


# --- CORS for browsers -----------------------------------------------------------------

_CORS = {
    "Access-Control-Allow-Origin": "*",  # sessions carry no cookies or credentials
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
    "Access-Control-Expose-Headers": "Date",  # the snippet times pings by our clock
}


def _public(path: str) -> bool:
    return path.startswith("/v1/sessions") or path == "/t.js"


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _public(request.path):
        return await handler(request)
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=_CORS)
    response = await handler(request)
    response.headers.update(_CORS)
    return response


def setup(http: web.Application) -> None:
    """Register the routes, the CORS middleware and the session rate limiter."""
    require(http, NEEDS, __name__)
    settings = http[SETTINGS]().http
    http[LIMITER] = RateLimiter(settings.session_rate_limit, settings.session_rate_burst)
    http[SIZINGS] = domain_stats.SizingCache()
    http.middlewares.insert(0, cors)  # outermost: error answers carry CORS headers too
    http.add_routes([
        web.get("/t.js", snippet),
        web.post("/v1/sessions", create_session),
        web.post("/v1/sessions/{session_id}/ping", ping),
        web.get("/v1/stats", stats),
        web.get("/v1/pools/usage", pool_usage),
        web.get("/v1/admin/webhooks", list_webhooks),
        web.post("/v1/admin/webhooks/{delivery_id}/resend", resend_webhook),
    ])
