"""Reports, spend and CRM write-back over HTTP (admin):

- `GET /v1/reports`: calls, visitors, spend, CPL, revenue and ROI grouped by any of
  `reports.DIMENSIONS` (`group_by`), filtered on the same, over a period;
- `PUT /v1/spend` (JSON or CSV) and `GET /v1/spend`: daily ad spend;
- `PATCH /v1/calls/{call_id}`: `tags`, `lead_status`, `value`, with a `call.updated`
  webhook through the outbox.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ..store.base import StoreError
from ..tracking import reports as rep
from ..tracking.model import CallRecord, Tracker
from ..webhooks.payload import build_deliveries
from .api import ApiError, Handler, _time_param, require_admin
from .keys import CLOCK, NOTIFY_OUTBOX, STORE, TRACKING, require

NEEDS: Final = (STORE, TRACKING, NOTIFY_OUTBOX, CLOCK)

DEFAULT_DAYS = 30  # a report without `since` covers the last 30 local days
MAX_SPEND_ROWS = 100_000
_LOWERED = frozenset({"channel", "source", "medium", "referrer_domain"})


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name}: {message}")


def _values(request: web.Request, name: str) -> list[str]:
    return [v.strip() for raw in request.query.getall(name, []) for v in raw.split(",")
            if v.strip()]


def _filter_value(dim: str, raw: str) -> Any:
    if dim == "day":
        try:
            return rep.day_number(raw)
        except ValueError:
            raise _invalid(dim, f"expected a day as YYYY-MM-DD, got {raw!r}") from None
    if dim in ("hour", "weekday"):
        lo, hi = (0, 23) if dim == "hour" else (1, 7)
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise _invalid(dim, f"expected an integer {lo}..{hi}, got {raw!r}")
        return int(raw)
    if dim == "first_time":
        if raw.lower() not in ("true", "false"):
            raise _invalid(dim, f"expected true or false, got {raw!r}")
        return raw.lower() == "true"
    return raw.lower() if dim in _LOWERED else raw


def _tracker_param(request: web.Request, name: str = "tracker") -> str | None:
    tracker = request.query.get(name) or None
    if tracker is not None and request.app[TRACKING].tracker(tracker) is None:
        raise _invalid(name, f"no tracker {tracker!r} is configured")
    return tracker


def _pools(trackers: tuple[Tracker, ...], only: str | None) -> dict[str, str]:
    return {n: p.name for t in trackers if only in (None, t.id) for p in t.pools
            for n in p.numbers}


def parse_report_query(request: web.Request) -> rep.ReportQuery:
    allowed = {"group_by", "tracker", "since", "until", "tz", *rep.DIMENSIONS}
    for name in request.query:
        if name not in allowed:
            raise _invalid(name, "unknown parameter (group_by, tracker, since, until or a "
                                 f"dimension: {', '.join(rep.DIMENSIONS)})")
    group_by: list[str] = []
    for dim in _values(request, "group_by"):
        if dim not in rep.DIMENSIONS:
            raise _invalid("group_by", f"unknown dimension {dim!r}; one of "
                                       f"{', '.join(rep.DIMENSIONS)}")
        if dim not in group_by:
            group_by.append(dim)
    filters = {d: frozenset(_filter_value(d, v) for v in _values(request, d))
               for d in rep.DIMENSIONS if d in request.query}
    for dim, accepted in filters.items():
        if not accepted:
            raise _invalid(dim, "expected one or more values (comma-separated or repeated)")
    tracker = _tracker_param(request)
    zone = _zone_param(request, tracker)
    until = (_local_time_param(request, "until", zone)
             or datetime.fromtimestamp(request.app[CLOCK](), UTC))
    since = _local_time_param(request, "since", zone)
    if since is None:
        today = rep.local_date(until.timestamp(), zone)
        since = datetime.fromtimestamp(
            rep.local_midnight(today - timedelta(days=DEFAULT_DAYS - 1), zone), UTC)
    if since > until:
        raise _invalid("since", "must not be after until")
    return rep.ReportQuery(
        group_by=tuple(group_by), filters=filters, tracker=tracker,
        since=since.timestamp(), until=until.timestamp(),
        pools=_pools(request.app[TRACKING].trackers, tracker), zone=zone)


def _zone_param(request: web.Request, tracker: str | None) -> str:
    """`?tz=`, else the tracker's `timezone`, else UTC: the report's days and hours."""
    zone = request.query.get("tz") or None
    if zone is None:
        t = request.app[TRACKING].tracker(tracker) if tracker else None
        return t.timezone if t is not None else "UTC"
    try:
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise _invalid("tz", f"expected an IANA time zone (Europe/Berlin), got {zone!r}") \
            from None
    return zone


def _local_time_param(request: web.Request, name: str, zone: str) -> datetime | None:
    """A time without an offset (a day "2026-12-01" or "2026-12-01T09:00") is the zone's
    local time; with one ("Z", "+03:00") or unix seconds it is that instant."""
    raw = request.query.get(name) or ""
    if raw and not raw.replace(".", "", 1).isdigit() and not raw.endswith("Z"):
        try:
            naive = datetime.fromisoformat(raw)
        except ValueError:
            naive = None  # _time_param answers 400
        if naive is not None and naive.tzinfo is None:
            return naive.replace(tzinfo=ZoneInfo(zone))
    return _time_param(request, name)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def report(request: web.Request) -> web.Response:
    require_admin(request)
    query = parse_report_query(request)
    store = request.app[STORE]
    calls = await store.report_calls(query)
    visits = await store.report_visits(query) if query.visits_apply() else []
    coarse = rep.spend_query(query)
    spend_rows: list[rep.SpendRow] = []
    if query.spend_applies() or coarse is not None:
        since_day = rep.local_date(query.since, query.zone)
        until_day = rep.local_date(query.until, query.zone) + timedelta(days=1)
        spend_rows = await store.list_spend(query.tracker, since_day.isoformat(),
                                            until_day.isoformat())
    out, totals = rep.build_rows(query, calls, visits, rep.aggregate_spend(spend_rows, query))
    answer: dict[str, Any] = {
        "since": _iso(query.since), "until": _iso(query.until),
        "tracker": query.tracker, "timezone": query.zone, "group_by": list(query.group_by),
        "rows": out, "totals": totals,
    }
    if coarse is not None:
        # the rows cannot carry spend (it has no term, say): the same calls added up by
        # the dimensions spend has, with spend, CPL and ROI
        c_calls, _ = rep.rollup(query, coarse, calls, [])
        c_visits = await store.report_visits(coarse) if coarse.visits_apply() else []
        answer["spend_group_by"] = list(coarse.group_by)
        answer["spend_rows"] = rep.build_rows(
            coarse, c_calls, c_visits, rep.aggregate_spend(spend_rows, coarse))[0]
    return web.json_response(answer)


# --- spend -------------------------------------------------------------------------------


def _spend_row(request: web.Request, item: object, where: str) -> rep.SpendRow:
    if not isinstance(item, dict):
        raise _invalid(where, "expected an object")
    known = {"tracker", "day", "source", "medium", "campaign", "amount", "currency"}
    for name in item:
        if name not in known:
            raise _invalid(f"{where}.{name}", f"unknown field ({', '.join(sorted(known))})")
    tracker = item.get("tracker")
    if not isinstance(tracker, str) or request.app[TRACKING].tracker(tracker) is None:
        raise _invalid(f"{where}.tracker", f"no tracker {tracker!r} is configured")
    day = item.get("day")
    try:
        day_text = date.fromisoformat(day).isoformat() if isinstance(day, str) else None
    except ValueError:
        day_text = None
    if day_text is None:
        raise _invalid(f"{where}.day", f"expected a day as YYYY-MM-DD, got {day!r}")
    text: dict[str, str] = {}
    for name in ("source", "medium", "campaign"):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 200
                                  or "\x1f" in value or "\x1e" in value):
            raise _invalid(f"{where}.{name}", "expected a string of up to 200 characters")
        value = (value or "").strip()
        text[name] = value.lower() if name != "campaign" else value
    amount = item.get("amount")
    if isinstance(amount, str):
        try:
            amount = float(amount)
        except ValueError:
            pass
    if (isinstance(amount, bool) or not isinstance(amount, int | float)
            or not math.isfinite(amount) or not 0 <= amount <= 1e12):
        raise _invalid(f"{where}.amount", f"expected a number >= 0, got {item.get('amount')!r}")
    currency = item.get("currency")
    if not isinstance(currency, str) or not (len(currency) == 3 and currency.isalpha()):
        raise _invalid(f"{where}.currency",
                       f"expected a 3-letter currency code (ISO 4217), got {currency!r}")
    return rep.SpendRow(tracker, day_text, text["source"], text["medium"], text["campaign"],
                        round(amount * 100), currency.upper())


async def _body(request: web.Request) -> bytes:
    """The body as the HTTP guard read it (its size limit applies)."""
    return await request.read()


def _spend_items(content_type: str, body: bytes) -> list[tuple[str, object]]:
    """(where, item) per row of a JSON or CSV body."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid("body", "expected UTF-8") from None
    if content_type == "text/csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "amount" not in reader.fieldnames:
            raise _invalid("body", "expected a CSV header line naming the columns "
                                   "(tracker,day,source,medium,campaign,amount,currency)")
        return [(f"line {reader.line_num}", {k.strip(): (v if v != "" else None)
                                             for k, v in row.items() if k is not None})
                for row in reader]
    try:
        doc = json.loads(text)
    except ValueError:
        raise _invalid("body", "expected JSON ({\"spend\": [...]}) or text/csv") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("spend"), list):
        raise _invalid("spend", "expected {\"spend\": [{...}, ...]}")
    return [(f"spend[{i}]", item) for i, item in enumerate(doc["spend"])]


async def put_spend(request: web.Request) -> web.Response:
    require_admin(request)
    items = _spend_items(request.content_type, await _body(request))
    if len(items) > MAX_SPEND_ROWS:
        raise _invalid("spend", f"at most {MAX_SPEND_ROWS} rows a request")
    rows = {r.key(): r for r in (_spend_row(request, item, where) for where, item in items)}
    await request.app[STORE].put_spend(list(rows.values()))
    return web.json_response({"stored": len(rows)})


def _day_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name) or None
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw[:10]).isoformat()
    except ValueError:
        raise _invalid(name, f"expected a day as YYYY-MM-DD, got {raw!r}") from None


async def get_spend(request: web.Request) -> web.Response:
    require_admin(request)
    rows = await request.app[STORE].list_spend(
        _tracker_param(request), _day_param(request, "since"), _day_param(request, "until"))
    return web.json_response({"spend": [r.to_json() for r in rows]})


# --- CRM write-back ----------------------------------------------------------------------


def apply_patch(record: CallRecord, body: object) -> CallRecord:
    """The record with the PATCH body's fields; ApiError (400) naming a bad field."""
    if not isinstance(body, dict) or not body:
        raise _invalid("body", "expected an object with tags, lead_status and/or value")
    for name in body:
        if name not in ("tags", "lead_status", "value"):
            raise _invalid(name, "unknown field (tags, lead_status, value)")
    tags = record.tags
    if "tags" in body:
        raw = body["tags"]
        if raw is None:
            raw = []
        if not isinstance(raw, list) or len(raw) > rep.MAX_TAGS:
            raise _invalid("tags", f"expected a list of at most {rep.MAX_TAGS} strings")
        clean: list[str] = []
        for i, tag in enumerate(raw):
            if (not isinstance(tag, str) or not tag.strip()
                    or len(tag.strip()) > rep.MAX_TAG_LENGTH
                    or any(ord(ch) < 32 for ch in tag)):
                raise _invalid(f"tags[{i}]", f"expected a string of 1..{rep.MAX_TAG_LENGTH} "
                                             "characters without control characters")
            if tag.strip() not in clean:
                clean.append(tag.strip())
        tags = tuple(clean)
    lead_status = record.lead_status
    if "lead_status" in body:
        lead_status = body["lead_status"]
        if lead_status is not None and lead_status not in rep.LEAD_STATUSES:
            raise _invalid("lead_status", f"one of {', '.join(rep.LEAD_STATUSES)} or null")
    value = record.value
    if "value" in body:
        value = body["value"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or not 0 <= value <= 1e12):
            raise _invalid("value", "expected a number >= 0 (money) or null")
        value = None if value is None else round(float(value), 2)
    return replace(record, tags=tags, lead_status=lead_status, value=value)


async def patch_call(request: web.Request) -> web.Response:
    require_admin(request)
    store = request.app[STORE]
    try:
        body = await request.json()
    except ValueError:
        raise _invalid("body", "expected JSON") from None
    record = await store.get_call(request.match_info["call_id"])
    if record is None:
        raise ApiError(404, "not_found", "no call with that id")
    updated = apply_patch(record, body)
    tracker = request.app[TRACKING].tracker(record.tracker)
    deliveries = build_deliveries("call.updated", updated, tracker.webhooks if tracker else (),
                                  request.app[CLOCK]())
    await store.update_call(updated, deliveries)
    if deliveries:
        request.app[NOTIFY_OUTBOX]()
    return web.json_response(updated.to_json())


def _store_errors(handler: Handler) -> Handler:
    """A store that cannot answer is a 503 naming why, not a 500."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", str(exc)) from None

    return wrapped


def setup(http: web.Application) -> None:
    require(http, NEEDS, __name__)
    http.add_routes([
        web.get("/v1/reports", _store_errors(report)),
        web.put("/v1/spend", _store_errors(put_spend)),
        web.get("/v1/spend", _store_errors(get_spend)),
        web.patch("/v1/calls/{call_id}", _store_errors(patch_call)),
    ])
